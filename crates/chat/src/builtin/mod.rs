pub fn tokenizer_json() -> String {
    String::new()
}
