//! crvs-server
