//! A small plain-text table formatter.
//!
//! Written here rather than taken from `comfy-table` or `tabled`: the tables this crate
//! prints need aligned columns, a header rule and rows that carry a note instead of
//! cells (an unreachable replica), which is a few dozen lines, and it keeps the
//! dependency tree lean.

use std::fmt;

/// How a column's cells are aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Text: padded on the right.
    Left,
    /// Numbers: padded on the left.
    Right,
}

#[derive(Clone, Debug)]
enum Row {
    Cells(Vec<String>),
    Note(String, String),
}

/// A table of text cells, rendered with aligned columns separated by two spaces and a
/// rule under the header.
///
/// ```
/// use bank_app::{Align, Table};
/// let mut t = Table::new([("node", Align::Left), ("total", Align::Right)]);
/// t.row(["n1", "100"]);
/// t.note("n2", "unreachable");
/// assert_eq!(t.to_string(), "node  total\n----  -----\nn1      100\nn2    unreachable\n");
/// ```
#[derive(Clone, Debug)]
pub struct Table {
    headers: Vec<String>,
    align: Vec<Align>,
    rows: Vec<Row>,
}

impl Table {
    /// A table with these column headers and alignments.
    pub fn new<H: Into<String>>(columns: impl IntoIterator<Item = (H, Align)>) -> Table {
        let (headers, align) = columns.into_iter().map(|(h, a)| (h.into(), a)).unzip();
        Table {
            headers,
            align,
            rows: Vec::new(),
        }
    }

    /// Adds a row. Missing cells are blank; cells beyond the last column are ignored.
    pub fn row<C: Into<String>>(&mut self, cells: impl IntoIterator<Item = C>) -> &mut Table {
        let mut cells: Vec<String> = cells
            .into_iter()
            .take(self.headers.len())
            .map(Into::into)
            .collect();
        cells.resize(self.headers.len(), String::new());
        self.rows.push(Row::Cells(cells));
        self
    }

    /// Adds a row with `first` in the first column and `text` after it, not split into
    /// columns (for a replica that could not be asked, say).
    pub fn note(&mut self, first: impl Into<String>, text: impl Into<String>) -> &mut Table {
        self.rows.push(Row::Note(first.into(), text.into()));
        self
    }

    /// True when the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            match row {
                Row::Cells(cells) => {
                    for (w, c) in widths.iter_mut().zip(cells) {
                        *w = (*w).max(c.chars().count());
                    }
                }
                Row::Note(first, _) => {
                    if let Some(w) = widths.first_mut() {
                        *w = (*w).max(first.chars().count());
                    }
                }
            }
        }
        widths
    }
}

fn write_cells<'a>(
    f: &mut fmt::Formatter<'_>,
    cells: impl Iterator<Item = &'a str>,
    widths: &[usize],
    align: &[Align],
) -> fmt::Result {
    let mut line = String::new();
    for (i, ((cell, &width), &align)) in cells.zip(widths).zip(align).enumerate() {
        if i > 0 {
            line.push_str("  ");
        }
        let pad = width.saturating_sub(cell.chars().count());
        match align {
            Align::Left => {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
            Align::Right => {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            }
        }
    }
    writeln!(f, "{}", line.trim_end())
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let widths = self.widths();
        write_cells(
            f,
            self.headers.iter().map(String::as_str),
            &widths,
            &self.align,
        )?;
        let rules: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
        let left = vec![Align::Left; widths.len()];
        write_cells(f, rules.iter().map(String::as_str), &widths, &left)?;
        for row in &self.rows {
            match row {
                Row::Cells(cells) => {
                    write_cells(f, cells.iter().map(String::as_str), &widths, &self.align)?
                }
                Row::Note(first, text) => {
                    let width = widths.first().copied().unwrap_or(0);
                    let pad = width.saturating_sub(first.chars().count());
                    writeln!(f, "{first}{}  {text}", " ".repeat(pad))?;
                }
            }
        }
        Ok(())
    }
}
