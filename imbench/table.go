package main

import (
	"fmt"
	"io"
	"strings"
)

// Table is one result table: printed aligned on stdout and as Markdown.
type Table struct {
	Title   string
	Command string
	Cols    []string
	Rows    [][]string
	Notes   []string
}

func (t *Table) Add(cells ...string) { t.Rows = append(t.Rows, cells) }

func (t *Table) Print(w io.Writer) {
	width := make([]int, len(t.Cols))
	for i, c := range t.Cols {
		width[i] = len(c)
	}
	for _, r := range t.Rows {
		for i, c := range r {
			if i < len(width) && len(c) > width[i] {
				width[i] = len(c)
			}
		}
	}
	fmt.Fprintf(w, "\n== %s\n", t.Title)
	line := func(cells []string) {
		var b strings.Builder
		for i, c := range cells {
			if i > 0 {
				b.WriteString("  ")
			}
			fmt.Fprintf(&b, "%*s", width[i], c)
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
	line(t.Cols)
	for _, r := range t.Rows {
		line(r)
	}
	for _, n := range t.Notes {
		fmt.Fprintln(w, "  "+n)
	}
}

func (t *Table) Markdown(w io.Writer) {
	fmt.Fprintf(w, "### %s\n\n", t.Title)
	if t.Command != "" {
		fmt.Fprintf(w, "```\n%s\n```\n\n", t.Command)
	}
	fmt.Fprintf(w, "| %s |\n", strings.Join(t.Cols, " | "))
	seps := make([]string, len(t.Cols))
	for i := range seps {
		seps[i] = "---:"
	}
	fmt.Fprintf(w, "|%s|\n", strings.Join(seps, "|"))
	for _, r := range t.Rows {
		fmt.Fprintf(w, "| %s |\n", strings.Join(r, " | "))
	}
	fmt.Fprintln(w)
	for _, n := range t.Notes {
		fmt.Fprintf(w, "- %s\n", n)
	}
	if len(t.Notes) > 0 {
		fmt.Fprintln(w)
	}
}

func f0(v float64) string { return fmt.Sprintf("%.0f", v) }
func f1(v float64) string { return fmt.Sprintf("%.1f", v) }

// rate prints a msg/s figure: whole above 10, else with two decimals (a
// 100,000-member fan-out steps at fractions of a message per second).
func rate(v float64) string {
	if v >= 10 {
		return f0(v)
	}
	return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.2f", v), "0"), ".")
}
func f2(v float64) string { return fmt.Sprintf("%.2f", v) }
func ms(v float64) string {
	if v < 0 {
		return "-"
	}
	if v < 10 {
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.1f", v)
}
func itoa(v int64) string { return fmt.Sprintf("%d", v) }
