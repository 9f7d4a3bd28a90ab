//! Counting lines of Rust: non-blank lines with something besides comments,
//! outside `#[cfg(test)]` modules (unit tests do not run in a VM).

/// Lines of code in `source`.
pub fn count(source: &str) -> usize {
    let mut scanner = Scanner::default();
    let mut lines = 0;
    // Brace depth at which a `#[cfg(test)]` module ends, while inside one.
    let mut test_module_until: Option<i64> = None;
    let mut cfg_test_pending = false;
    for line in source.lines() {
        let (code, opened, closed) = scanner.line(line);
        let trimmed = code.trim();
        let depth_before = scanner.depth - opened + closed;
        if let Some(until) = test_module_until {
            if scanner.depth <= until {
                test_module_until = None;
            }
            continue;
        }
        if trimmed == "#[cfg(test)]" {
            cfg_test_pending = true;
            continue;
        }
        if cfg_test_pending && trimmed.starts_with("mod ") && opened > closed {
            test_module_until = Some(depth_before);
            cfg_test_pending = false;
            continue;
        }
        if cfg_test_pending && !trimmed.is_empty() {
            // `#[cfg(test)]` on something else: count both lines.
            lines += 1;
            cfg_test_pending = false;
        }
        if !trimmed.is_empty() {
            lines += 1;
        }
    }
    lines
}

/// Where a line-by-line scan stands: inside a block comment or a string, and
/// the brace depth of the code seen so far.
#[derive(Default)]
struct Scanner {
    comment_depth: u32,
    in_string: bool,
    /// `#`s closing the raw string being scanned (`None`: an ordinary string).
    raw_hashes: Option<usize>,
    depth: i64,
}

impl Scanner {
    /// The code of `line` (comments removed), and the braces it opened and closed.
    fn line(&mut self, line: &str) -> (String, i64, i64) {
        let chars: Vec<char> = line.chars().collect();
        let mut code = String::new();
        let (mut opened, mut closed) = (0, 0);
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let next = chars.get(i + 1).copied();
            if self.comment_depth > 0 {
                if c == '*' && next == Some('/') {
                    self.comment_depth -= 1;
                    i += 2;
                } else if c == '/' && next == Some('*') {
                    self.comment_depth += 1;
                    i += 2;
                } else {
                    i += 1;
                }
                continue;
            }
            if self.in_string {
                code.push(c);
                match self.raw_hashes {
                    None if c == '\\' => {
                        if let Some(n) = next {
                            code.push(n);
                        }
                        i += 2;
                        continue;
                    }
                    None if c == '"' => self.in_string = false,
                    Some(h)
                        if c == '"'
                            && chars[i + 1..].iter().take(h).filter(|&&x| x == '#').count()
                                == h =>
                    {
                        code.extend(std::iter::repeat_n('#', h));
                        self.in_string = false;
                        i += 1 + h;
                        continue;
                    }
                    _ => {}
                }
                i += 1;
                continue;
            }
            match (c, next) {
                ('/', Some('/')) => break,
                ('/', Some('*')) => {
                    self.comment_depth += 1;
                    i += 2;
                    continue;
                }
                ('"', _) => {
                    self.in_string = true;
                    self.raw_hashes = None;
                }
                ('r', Some('"' | '#')) if !prev_is_ident(&chars, i) => {
                    let hashes = chars[i + 1..].iter().take_while(|&&x| x == '#').count();
                    if chars.get(i + 1 + hashes) == Some(&'"') {
                        code.extend(chars[i..i + 2 + hashes].iter());
                        self.in_string = true;
                        self.raw_hashes = Some(hashes);
                        i += 2 + hashes;
                        continue;
                    }
                }
                ('\'', _) => {
                    // A char literal ('{', '"', '\'') is skipped whole; a lifetime is not one.
                    if let Some(len) = char_literal_len(&chars[i..]) {
                        code.extend(chars[i..i + len].iter());
                        i += len;
                        continue;
                    }
                }
                ('{', _) => {
                    self.depth += 1;
                    opened += 1;
                }
                ('}', _) => {
                    self.depth -= 1;
                    closed += 1;
                }
                _ => {}
            }
            code.push(c);
            i += 1;
        }
        (code, opened, closed)
    }
}

fn prev_is_ident(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// The length of a char literal starting at `s[0] == '\''`, if it is one.
fn char_literal_len(s: &[char]) -> Option<usize> {
    match s.get(1)? {
        '\\' => s.iter().skip(2).position(|&c| c == '\'').map(|p| p + 3),
        _ if s.get(2) == Some(&'\'') => Some(3),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn counts_code_lines_only() {
        let src = r#"//! module docs
/// item docs
fn a() {
    // a comment
    let s = "// not a comment"; // trailing

    /* block
       comment */ let b = '{';
}
/* one */ /* two */
#[cfg(test)]
mod tests {
    fn t() { let x = "}"; }
}
fn after() {}
"#;
        // fn a() {, let s, let b, }, fn after() {}
        assert_eq!(count(src), 5);
    }

    #[test]
    fn raw_strings_and_lifetimes() {
        let src = "fn f<'a>(x: &'a str) -> &'a str {\n    let r = r#\"{ // \"#;\n    x\n}\n";
        assert_eq!(count(src), 4);
    }
}
