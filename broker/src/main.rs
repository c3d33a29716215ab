fn main() {
    println!("fieldbridge-broker {}", fieldbridge_broker::VERSION);
}
