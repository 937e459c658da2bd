//! The CSV writer every experiment uses: a fixed header, rows of cells, RFC 4180 quoting (a cell
//! with a comma, quote or line break is quoted, quotes doubled), numbers written so that they
//! read back exactly as printed.

use std::fmt::Write as _;
use std::path::Path;

/// One cell.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    /// Text (quoted when needed).
    Text(String),
    /// An integer.
    Integer(i64),
    /// A number, written with up to `digits` decimals (trailing zeros dropped); NaN is empty.
    Number(f64, usize),
    /// Nothing measured.
    Empty,
}

impl From<&str> for Cell {
    fn from(text: &str) -> Self {
        Cell::Text(text.to_string())
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Cell::Text(text)
    }
}

impl From<u64> for Cell {
    fn from(value: u64) -> Self {
        Cell::Integer(value.min(i64::MAX as u64) as i64)
    }
}

impl From<u32> for Cell {
    fn from(value: u32) -> Self {
        Cell::Integer(i64::from(value))
    }
}

impl From<f64> for Cell {
    fn from(value: f64) -> Self {
        Cell::Number(value, 3)
    }
}

impl From<Option<f64>> for Cell {
    fn from(value: Option<f64>) -> Self {
        value.map_or(Cell::Empty, Cell::from)
    }
}

impl Cell {
    fn write(&self, out: &mut String) {
        match self {
            Cell::Text(text) => {
                if text.contains([',', '"', '\n', '\r']) {
                    out.push('"');
                    out.push_str(&text.replace('"', "\"\""));
                    out.push('"');
                } else {
                    out.push_str(text);
                }
            }
            Cell::Integer(value) => {
                let _ = write!(out, "{value}");
            }
            Cell::Number(value, _) if !value.is_finite() => {}
            Cell::Number(value, digits) => {
                let text = format!("{value:.digits$}");
                let text = if text.contains('.') {
                    text.trim_end_matches('0').trim_end_matches('.').to_string()
                } else {
                    text
                };
                out.push_str(if text == "-0" { "0" } else { &text });
            }
            Cell::Empty => {}
        }
    }
}

/// A table with a fixed header.
#[derive(Clone, Debug)]
pub struct Table {
    columns: Vec<String>,
    rows: Vec<Vec<Cell>>,
}

/// A row whose width is not the header's.
#[derive(Debug, PartialEq, Eq)]
pub struct WidthError {
    /// Header width.
    pub columns: usize,
    /// Cells given.
    pub cells: usize,
}

impl Table {
    /// An empty table with these columns.
    pub fn new(columns: &[&str]) -> Self {
        Self {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// The header.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The rows so far.
    pub fn rows(&self) -> &[Vec<Cell>] {
        &self.rows
    }

    /// Appends a row; it must have one cell per column.
    pub fn push(&mut self, row: Vec<Cell>) -> Result<(), WidthError> {
        if row.len() != self.columns.len() {
            return Err(WidthError {
                columns: self.columns.len(),
                cells: row.len(),
            });
        }
        self.rows.push(row);
        Ok(())
    }

    /// The table as CSV text (header first, `\n` line ends).
    pub fn to_csv(&self) -> String {
        let mut out = String::new();
        let header: Vec<Cell> = self.columns.iter().map(|c| Cell::Text(c.clone())).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            for (index, cell) in row.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                cell.write(&mut out);
            }
            out.push('\n');
        }
        out
    }

    /// Writes the CSV to `path`.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_csv())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_rows_quoting_and_numbers() {
        let mut table = Table::new(&["system", "rate", "note"]);
        table
            .push(vec!["flotilla".into(), 1234.5.into(), "plain".into()])
            .unwrap();
        table
            .push(vec![
                "linux".into(),
                Cell::Number(2.0, 3),
                "a, \"quoted\" one".into(),
            ])
            .unwrap();
        table
            .push(vec![
                Cell::Integer(-3),
                Cell::Number(f64::NAN, 2),
                Cell::Empty,
            ])
            .unwrap();
        table
            .push(vec![Cell::Number(-0.0001, 2), 7u64.into(), None.into()])
            .unwrap();
        assert_eq!(
            table.push(vec!["short".into()]),
            Err(WidthError {
                columns: 3,
                cells: 1
            })
        );
        assert_eq!(
            table.to_csv(),
            "system,rate,note\nflotilla,1234.5,plain\nlinux,2,\"a, \"\"quoted\"\" one\"\n-3,,\n0,7,\n"
        );
        assert_eq!(table.rows().len(), 4);
        let path =
            std::env::temp_dir().join(format!("flotilla-csv-test-{}.csv", std::process::id()));
        table.write(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), table.to_csv());
        let _ = std::fs::remove_file(path);
    }
}
