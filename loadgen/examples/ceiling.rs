//! Prints the generator's loopback ceiling next to the plain client's rate:
//! `cargo run -p loadgen --release --example ceiling`.

fn main() {
    match loadgen::ceiling::measure(std::time::Duration::from_secs(2)) {
        Ok(ceiling) => println!("{ceiling}"),
        Err(error) => {
            eprintln!("ceiling: {error}");
            std::process::exit(1);
        }
    }
}
