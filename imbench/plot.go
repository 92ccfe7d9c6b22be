package main

import (
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"sort"
	"strings"
)

// A small hand-rolled line plot, so that no plotting tool is needed: one
// panel per scenario, latency (log scale) against achieved rate.

func plotFiles(out string, files []string) error {
	var rows []plotRow
	for _, f := range files {
		if f == "" {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		var r []plotRow
		if err := json.Unmarshal(b, &r); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		rows = append(rows, r...)
	}
	byScen := map[string][]plotRow{}
	var names []string
	for _, r := range rows {
		if _, ok := byScen[r.Scenario]; !ok {
			names = append(names, r.Scenario)
		}
		byScen[r.Scenario] = append(byScen[r.Scenario], r)
	}
	if len(names) == 0 {
		return fmt.Errorf("no rows")
	}
	const pw, ph = 560, 400
	img := image.NewRGBA(image.Rect(0, 0, pw*len(names), ph))
	for i := range img.Pix {
		img.Pix[i] = 255
	}
	for i, n := range names {
		drawPanel(img, i*pw, pw, ph, n, byScen[n])
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	return png.Encode(f, img)
}

var (
	black = color.RGBA{0, 0, 0, 255}
	grey  = color.RGBA{220, 220, 220, 255}
	cols  = []color.RGBA{{31, 119, 180, 255}, {214, 39, 40, 255}, {44, 160, 44, 255}}
)

func drawPanel(img *image.RGBA, x0, w, h int, name string, rows []plotRow) {
	sort.Slice(rows, func(i, j int) bool { return xval(name, rows[i]) < xval(name, rows[j]) })
	left, right, top, bottom := x0+70, x0+w-20, 40, h-60
	xmax := 0.0
	ymin, ymax := math.Inf(1), 0.0
	for _, r := range rows {
		xmax = math.Max(xmax, xval(name, r))
		for _, v := range []float64{r.P50, r.P99, r.P999} {
			if v > 0 {
				ymin = math.Min(ymin, v)
				ymax = math.Max(ymax, v)
			}
		}
	}
	if ymax == 0 {
		return
	}
	xmax = niceCeil(xmax)
	lo, hi := math.Floor(math.Log10(ymin)), math.Ceil(math.Log10(ymax))
	if hi == lo {
		hi++
	}
	px := func(x float64) int { return left + int(x/xmax*float64(right-left)) }
	py := func(y float64) int {
		return bottom - int((math.Log10(y)-lo)/(hi-lo)*float64(bottom-top))
	}
	// grid and labels
	for d := lo; d <= hi; d++ {
		y := py(math.Pow(10, d))
		hline(img, left, right, y, grey)
		drawText(img, x0+8, y-3, fmtNum(math.Pow(10, d))+" MS", black)
	}
	for i := 0; i <= 4; i++ {
		x := xmax * float64(i) / 4
		vline(img, px(x), top, bottom, grey)
		drawText(img, px(x)-12, bottom+8, fmtNum(x), black)
	}
	hline(img, left, right, bottom, black)
	vline(img, left, top, bottom, black)
	xl := "MESSAGES/S SENT"
	if name == "fanout" {
		xl = "DELIVERIES/S"
	}
	drawText(img, left+(right-left)/2-len(xl)*3, bottom+26, xl, black)
	drawText(img, left, 12, strings.ToUpper(name)+": LATENCY PUBLISH TO RECEIPT", black)
	labels := []string{"P50", "P99", "P999"}
	for s := 0; s < 3; s++ {
		c := cols[s]
		var prevX, prevY int
		for i, r := range rows {
			v := []float64{r.P50, r.P99, r.P999}[s]
			if v <= 0 {
				continue
			}
			x, y := px(xval(name, r)), py(v)
			dot(img, x, y, c)
			if i > 0 {
				line(img, prevX, prevY, x, y, c)
			}
			prevX, prevY = x, y
		}
		lx := right - 60
		ly := top + 8 + s*14
		hline(img, lx, lx+14, ly+3, c)
		drawText(img, lx+18, ly, labels[s], c)
	}
}

func xval(name string, r plotRow) float64 {
	if name == "fanout" {
		return r.Deliv
	}
	return r.Rate
}

func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func fmtNum(v float64) string {
	switch {
	case v >= 1e6:
		return strings.TrimSuffix(fmt.Sprintf("%.1f", v/1e6), ".0") + "M"
	case v >= 1e3:
		return strings.TrimSuffix(fmt.Sprintf("%.1f", v/1e3), ".0") + "K"
	case v >= 1:
		return fmt.Sprintf("%.0f", v)
	default:
		return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.3f", v), "0"), ".")
	}
}

func hline(img *image.RGBA, x1, x2, y int, c color.RGBA) {
	for x := x1; x <= x2; x++ {
		img.SetRGBA(x, y, c)
	}
}

func vline(img *image.RGBA, x, y1, y2 int, c color.RGBA) {
	for y := y1; y <= y2; y++ {
		img.SetRGBA(x, y, c)
	}
}

func dot(img *image.RGBA, x, y int, c color.RGBA) {
	for dx := -2; dx <= 2; dx++ {
		for dy := -2; dy <= 2; dy++ {
			img.SetRGBA(x+dx, y+dy, c)
		}
	}
}

func line(img *image.RGBA, x1, y1, x2, y2 int, c color.RGBA) {
	n := max(abs(x2-x1), abs(y2-y1), 1)
	for i := 0; i <= n; i++ {
		x := x1 + (x2-x1)*i/n
		y := y1 + (y2-y1)*i/n
		img.SetRGBA(x, y, c)
		img.SetRGBA(x, y+1, c)
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

// 5×7 glyphs, one string of 7 rows per character.
var glyphs = map[rune][7]string{
	'0': {".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."},
	'1': {"..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."},
	'2': {".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"},
	'3': {"####.", "....#", "....#", ".###.", "....#", "....#", "####."},
	'4': {"...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."},
	'5': {"#####", "#....", "####.", "....#", "....#", "#...#", ".###."},
	'6': {".###.", "#....", "#....", "####.", "#...#", "#...#", ".###."},
	'7': {"#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."},
	'8': {".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."},
	'9': {".###.", "#...#", "#...#", ".####", "....#", "....#", ".###."},
	'.': {".....", ".....", ".....", ".....", ".....", ".##..", ".##.."},
	':': {".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."},
	'/': {"....#", "...#.", "...#.", "..#..", ".#...", ".#...", "#...."},
	'-': {".....", ".....", ".....", "#####", ".....", ".....", "....."},
	' ': {".....", ".....", ".....", ".....", ".....", ".....", "....."},
	'A': {".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"},
	'B': {"####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."},
	'C': {".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."},
	'D': {"####.", "#...#", "#...#", "#...#", "#...#", "#...#", "####."},
	'E': {"#####", "#....", "#....", "####.", "#....", "#....", "#####"},
	'F': {"#####", "#....", "#....", "####.", "#....", "#....", "#...."},
	'G': {".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"},
	'H': {"#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"},
	'I': {".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."},
	'K': {"#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"},
	'L': {"#....", "#....", "#....", "#....", "#....", "#....", "#####"},
	'M': {"#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"},
	'N': {"#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#", "#...#"},
	'O': {".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."},
	'P': {"####.", "#...#", "#...#", "####.", "#....", "#....", "#...."},
	'R': {"####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"},
	'S': {".####", "#....", "#....", ".###.", "....#", "....#", "####."},
	'T': {"#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."},
	'U': {"#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."},
	'V': {"#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."},
	'Y': {"#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."},
}

func drawText(img *image.RGBA, x, y int, s string, c color.RGBA) {
	for _, r := range strings.ToUpper(s) {
		g, ok := glyphs[r]
		if !ok {
			g = glyphs[' ']
		}
		for row := 0; row < 7; row++ {
			for col := 0; col < 5; col++ {
				if g[row][col] == '#' {
					img.SetRGBA(x+col, y+row, c)
				}
			}
		}
		x += 6
	}
}
