fn main() {
    std::process::exit(pgkeep::cli::main());
}
