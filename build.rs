// `sqlx::migrate!` embeds migrations/ at compile time, but a proc macro cannot tell cargo about
// files added later: without this a new migration would be missing from an incremental build.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
