//! The sandbox helper as a binary of its own, for the crate's tests and benchmarks; the `automa` binary
//! provides the same through `automa __sandbox-helper`.

fn main() {
    automa_runner::helper::main()
}
