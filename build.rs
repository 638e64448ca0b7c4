fn main() {
    // Embedded migrations are read at compile time; a new file must trigger a rebuild.
    println!("cargo:rerun-if-changed=migrations");
}
