use std::collections::HashMap;
use std::io::{self, Read};

/// Read text from standard input and print the twenty most frequent words with their
/// counts. Words are lower-cased; anything that is not a letter or an apostrophe separates them.
fn main() -> io::Result<()> {
    let mut text = String::new();
    io::stdin().read_to_string(&mut text)?;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for word in text
        .split(|c: char| !(c.is_alphabetic() || c == '\''))
        .filter(|w| !w.is_empty())
    {
        *counts.entry(word.to_lowercase()).or_insert(0) += 1;
    }
    let mut pairs: Vec<_> = counts.into_iter().collect();
    pairs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for (word, n) in pairs.iter().take(20) {
        println!("{n:>8} {word}");
    }
    Ok(())
}
