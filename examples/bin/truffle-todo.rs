//! The todo example built as a binary for the process-level tests; see `examples/todo.rs`.

#[path = "../todo.rs"]
mod todo;

fn main() -> std::process::ExitCode {
    todo::main()
}
