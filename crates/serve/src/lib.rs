//! claas-serve
