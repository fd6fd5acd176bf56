//! claas-engine
