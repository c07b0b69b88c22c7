//! Sets `cfg(crvs_postgres)` when the PostgreSQL backend
//! (`src/storage/postgres`) is in the tree, so that the storage tests run
//! on it from the moment it is.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(crvs_postgres)");
    println!("cargo::rerun-if-changed=src/storage");
    let storage = std::path::Path::new("src/storage");
    if storage.join("postgres.rs").exists() || storage.join("postgres/mod.rs").exists() {
        println!("cargo::rustc-cfg=crvs_postgres");
    }
}
