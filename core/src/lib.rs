//! crvs-core
