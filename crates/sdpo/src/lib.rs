//! claas-sdpo
