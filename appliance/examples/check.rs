fn main() {
    let path = std::env::args().nth(1).unwrap_or_default();
    let src = std::fs::read_to_string(&path).unwrap_or_default();
    match appliance::load_str(&src) {
        Ok(c) => println!("OK\n{}", toml::to_string(&c).unwrap_or_default()),
        Err(d) => print!("{}", d.render(&src, &path, false)),
    }
}
