fn main() {
    println!("{}", restartable::status());
}
