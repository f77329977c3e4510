fn main() -> std::process::ExitCode {
    switchyard::cli::main()
}

// Chosen by measurement (bench/README.md): fewer instructions per request than glibc's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
