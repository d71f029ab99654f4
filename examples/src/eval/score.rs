//! Answer extraction and scoring.

use super::tasks::Target;

/// What was read out of a generation.
#[derive(Debug, Clone, PartialEq)]
pub enum Extracted {
    /// A choice letter (`A`, `B`, ...).
    Letter(char),
    /// A yes/no answer.
    YesNo(bool),
    /// A number.
    Number(f64),
    /// Free text (normalized).
    Text(String),
    /// Nothing usable.
    None,
}

impl std::fmt::Display for Extracted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Extracted::Letter(c) => write!(f, "{c}"),
            Extracted::YesNo(b) => write!(f, "{}", if *b { "yes" } else { "no" }),
            Extracted::Number(n) => write!(f, "{n}"),
            Extracted::Text(t) => write!(f, "{t}"),
            Extracted::None => write!(f, ""),
        }
    }
}

/// Reads the answer the target kind asks for out of the generated text (its first line).
pub fn extract(output: &str, target: &Target) -> Extracted {
    let line = output.trim().lines().next().unwrap_or("").trim();
    match target {
        Target::Choice { options, .. } => {
            first_letter(line, *options).map_or(Extracted::None, Extracted::Letter)
        }
        Target::YesNo(_) => {
            let word = normalize(line);
            match word.split_whitespace().next() {
                Some("yes" | "true") => Extracted::YesNo(true),
                Some("no" | "false") => Extracted::YesNo(false),
                _ => Extracted::None,
            }
        }
        Target::Number(_) => first_number(line).map_or(Extracted::None, Extracted::Number),
        Target::Text(_) => Extracted::Text(normalize(line)),
    }
}

/// Whether the extracted answer matches the target.
pub fn is_correct(extracted: &Extracted, target: &Target) -> bool {
    match (extracted, target) {
        (Extracted::Letter(c), Target::Choice { answer, .. }) => c == answer,
        (Extracted::YesNo(b), Target::YesNo(want)) => b == want,
        (Extracted::Number(n), Target::Number(want)) => (n - want).abs() < 1e-6,
        (Extracted::Text(t), Target::Text(answers)) => {
            !t.is_empty() && answers.iter().any(|a| normalize(a) == *t)
        }
        _ => false,
    }
}

/// The first standalone option letter (`B`, `(B)`, `B.`, `B)`), among the first `options`.
fn first_letter(line: &str, options: usize) -> Option<char> {
    let last = (b'A' + options.clamp(1, 26) as u8 - 1) as char;
    let chars: Vec<char> = line.chars().collect();
    (0..chars.len()).find_map(|i| {
        let c = chars[i];
        let before = i == 0 || !chars[i - 1].is_alphanumeric();
        let after = i + 1 == chars.len() || !chars[i + 1].is_alphanumeric();
        (('A'..=last).contains(&c) && before && after).then_some(c)
    })
}

/// The first number in the text (`1,234.5`, `-3`), commas as thousands separators.
fn first_number(line: &str) -> Option<f64> {
    let bytes = line.as_bytes();
    let start = bytes.iter().position(|b| b.is_ascii_digit())?;
    let start = if start > 0 && bytes[start - 1] == b'-' {
        start - 1
    } else {
        start
    };
    let mut end = start + 1;
    while end < bytes.len()
        && (bytes[end].is_ascii_digit() || bytes[end] == b',' || bytes[end] == b'.')
    {
        end += 1;
    }
    let number: String = line[start..end]
        .trim_end_matches(['.', ','])
        .replace(',', "");
    number.parse().ok()
}

/// SQuAD-style normalization: lower case, no punctuation, no articles, single spaces.
pub fn normalize(text: &str) -> String {
    let lower: String = text
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c.is_whitespace() {
                c
            } else {
                ' '
            }
        })
        .collect();
    lower
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice(answer: char) -> Target {
        Target::Choice { answer, options: 4 }
    }

    #[test]
    fn letters() {
        for (out, want) in [
            (" B", 'B'),
            ("(C) because", 'C'),
            ("D. a marsh", 'D'),
            ("Answer: A", 'A'),
        ] {
            assert_eq!(
                extract(out, &choice('B')),
                Extracted::Letter(want),
                "{out:?}"
            );
        }
        assert_eq!(
            extract(" E", &choice('B')),
            Extracted::None,
            "E is not an option of four"
        );
        assert_eq!(extract("Because", &choice('B')), Extracted::None);
        assert!(is_correct(
            &extract(" B\nQuestion: C", &choice('B')),
            &choice('B')
        ));
        assert!(!is_correct(&extract(" C", &choice('B')), &choice('B')));
    }

    #[test]
    fn yes_no() {
        assert_eq!(
            extract(" Yes, it is.", &Target::YesNo(true)),
            Extracted::YesNo(true)
        );
        assert_eq!(
            extract(" false", &Target::YesNo(true)),
            Extracted::YesNo(false)
        );
        assert_eq!(extract(" maybe", &Target::YesNo(true)), Extracted::None);
    }

    #[test]
    fn numbers() {
        assert_eq!(
            extract(" 1,234 apples", &Target::Number(1234.0)),
            Extracted::Number(1234.0)
        );
        assert_eq!(
            extract(" -3.5.", &Target::Number(-3.5)),
            Extracted::Number(-3.5)
        );
        assert_eq!(
            extract(" It is 15.", &Target::Number(15.0)),
            Extracted::Number(15.0)
        );
        assert!(is_correct(&Extracted::Number(15.0), &Target::Number(15.0)));
        assert_eq!(extract(" none", &Target::Number(1.0)), Extracted::None);
    }

    #[test]
    fn short_answers_match_any_gold_after_normalization() {
        let target = Target::Text(vec!["The Beatles".into(), "Beatles".into()]);
        assert!(is_correct(&extract(" the Beatles.\nQ:", &target), &target));
        assert!(!is_correct(
            &extract(" The Rolling Stones", &target),
            &target
        ));
        assert!(!is_correct(&extract("", &target), &target));
        assert_eq!(normalize("An  Apple, a day!"), "apple day");
    }
}
