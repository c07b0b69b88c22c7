//! `uniffi-bindgen`: generates the foreign-language sources of `crvs-mobile`
//! from the built library (library mode), e.g.
//!
//! ```sh
//! cargo build -p crvs-mobile
//! cargo run -p crvs-uniffi-bindgen -- generate \
//!     --library target/debug/libcrvs_mobile.so --language kotlin --out-dir out/
//! ```
//!
//! It lives in its own crate so that the mobile library does not pull in
//! the generator and its command-line parser.

fn main() {
    uniffi::uniffi_bindgen_main()
}
