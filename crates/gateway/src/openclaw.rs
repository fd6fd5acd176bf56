//! OpenClaw config writer (filled in below).
