//! Plain-text tables for command output: left-aligned columns, one header row.

/// Renders `rows` under `headers` with columns padded to their widest cell.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(i) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// `text` cut to at most `max` characters, keeping its start and end around a `…`
/// (a path keeps its top directory and its file name).
pub fn shorten(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max || max < 3 {
        return text.to_string();
    }
    let tail = (max - 1) / 2;
    let head = max - 1 - tail;
    let start: String = text.chars().take(head).collect();
    let end: String = text.chars().skip(count - tail).collect();
    format!("{start}…{end}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_cells_keep_their_start_and_end() {
        assert_eq!(shorten("/short", 48), "/short");
        let long = format!("/{}/name.txt", "d".repeat(100));
        let cut = shorten(&long, 20);
        assert_eq!(cut.chars().count(), 20);
        assert!(cut.starts_with("/dddd") && cut.ends_with("name.txt") && cut.contains('…'), "{cut}");
        assert_eq!(shorten("ünïcödé-ünïcödé", 7), "ünï…ödé");
    }
}
