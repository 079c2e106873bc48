package main

import (
	"bytes"
	"fmt"
	"html/template"
	"image/color"
	"math"
	"regexp"
	"strconv"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// chart is one figure of the report: an inline SVG, or nothing to draw.
type chart struct {
	ID    string // stable, for the browser check
	Title string
	SVG   template.HTML // empty: no data
}

// The charts' text in sans serif, like the page around them.
func init() {
	plot.DefaultFont = font.Font{Typeface: "Liberation", Variant: "Sans"}
}

var palette = []color.Color{
	color.RGBA{31, 119, 180, 255},  // blue
	color.RGBA{255, 127, 14, 255},  // orange
	color.RGBA{44, 160, 44, 255},   // green
	color.RGBA{148, 103, 189, 255}, // purple
	color.RGBA{214, 39, 40, 255},   // red
	color.RGBA{140, 86, 75, 255},   // brown
	color.RGBA{23, 190, 207, 255},  // teal
}

// inFlightPalette colours counts in flight, apart from the rates.
var inFlightPalette = []color.Color{
	color.RGBA{227, 119, 194, 255}, // pink
	color.RGBA{188, 189, 34, 255},  // olive
	color.RGBA{0, 110, 110, 255},   // dark cyan
	color.RGBA{90, 90, 90, 255},    // dark grey
}

// outcomeColor keeps each outcome's colour across charts; errors are red.
var outcomeColor = map[string]color.Color{
	"hit": palette[2], "coalesced": palette[0], "refreshed": palette[1], "bare": palette[3], "error": palette[4],
}

// stepSegments turns one series into step lines: each interval's value
// spans the interval, and intervals without a value (ok false) leave a gap.
func stepSegments(series []point, value func(point) (float64, bool)) []plotter.XYs {
	var out []plotter.XYs
	var cur plotter.XYs
	for _, p := range series {
		y, ok := value(p)
		if !ok {
			if cur != nil {
				out, cur = append(out, cur), nil
			}
			continue
		}
		if cur == nil {
			cur = plotter.XYs{{X: p.T - p.Span, Y: y}}
		}
		cur = append(cur, plotter.XY{X: p.T, Y: y})
	}
	if cur != nil {
		out = append(out, cur)
	}
	return out
}

// line is one named series of a chart over time.
type line struct {
	name  string
	color color.Color
	value func(point) (float64, bool)
	fill  bool // fill below (stacked areas are drawn top layer first)
	dash  bool
}

func always(f func(point) float64) func(point) (float64, bool) {
	return func(p point) (float64, bool) { return f(p), true }
}

func optional(f func(point) *float64) func(point) (float64, bool) {
	return func(p point) (float64, bool) {
		v := f(p)
		if v == nil {
			return 0, false
		}
		return *v, true
	}
}

// timeChart draws lines over [0, end] seconds with the outage shaded. It
// returns an empty SVG when no line has a value.
func timeChart(id, title, ylabel string, r *result, logY bool, lines []line) chart {
	return sizedTimeChart(id, title, ylabel, r, logY, lines, 1200, 300)
}

// smallTimeChart is a low timeChart, for counts in flight.
func smallTimeChart(id, title, ylabel string, r *result, lines []line) chart {
	return sizedTimeChart(id, title, ylabel, r, false, lines, 1200, 180)
}

// sizedTimeChart is timeChart drawn width by height points (narrower
// charts get larger type where the page shows them smaller).
func sizedTimeChart(id, title, ylabel string, r *result, logY bool, lines []line, width, height float64) chart {
	c := chart{ID: id, Title: title}
	p := plot.New()
	p.X.Label.Text = "seconds since the start"
	p.X.Tick.Marker = secondsTicks{}
	p.Y.Label.Text = ylabel
	p.Y.Tick.Marker = plainTicks{}
	p.X.Min, p.X.Max = 0, r.ElapsedS
	p.Y.Min = 0
	p.Legend.Top = true
	p.Add(plotter.NewGrid())
	if w := r.Config.Outage.window(); w != nil {
		s := shade{from: w[0], to: w[1]}
		p.Add(s)
		p.Legend.Add("outage ("+r.Config.Outage.Kind+")", s)
	}
	drawn, top := false, 0.0
	for _, l := range lines {
		segs := stepSegments(r.Series, l.value)
		if logY {
			segs = positive(segs)
		}
		for i, seg := range segs {
			pl, err := plotter.NewLine(seg)
			if err != nil {
				continue
			}
			pl.StepStyle = plotter.PreStep
			pl.Color = l.color
			pl.Width = vg.Points(1.5)
			if l.dash {
				pl.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			}
			if l.fill {
				pl.FillColor = l.color
			}
			p.Add(pl)
			for _, xy := range seg {
				top = math.Max(top, xy.Y)
			}
			if i == 0 {
				p.Legend.Add(l.name, pl)
			}
			drawn = true
		}
	}
	if !drawn {
		return c
	}
	if logY {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = durationTicks{}
		p.Y.Min = math.Inf(1)
		for _, l := range lines {
			for _, pt := range r.Series {
				if v, ok := l.value(pt); ok && v > 0 {
					p.Y.Min = math.Min(p.Y.Min, v)
				}
			}
		}
		p.Y.Min /= 2
		p.Y.Max = top * 4 // headroom for the legend
	} else {
		p.Y.Max = top * 1.3 // headroom for the legend
		if top == 0 {
			p.Y.Max = 1
		}
	}
	c.SVG = render(p, width, height)
	return c
}

// positive drops non-positive values, which a log scale cannot show.
func positive(segs []plotter.XYs) []plotter.XYs {
	var out []plotter.XYs
	for _, s := range segs {
		var cur plotter.XYs
		for _, xy := range s {
			if xy.Y > 0 {
				cur = append(cur, xy)
			}
		}
		if len(cur) > 1 {
			out = append(out, cur)
		}
	}
	return out
}

// histogramChart draws latency buckets on a logarithmic time axis.
func histogramChart(id, title string, buckets []bucket, col color.Color) chart {
	c := chart{ID: id, Title: title}
	if len(buckets) == 0 {
		return c
	}
	p := plot.New()
	p.X.Label.Text = "latency"
	p.Y.Label.Text = "count"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = durationTicks{}
	p.Y.Tick.Marker = plainTicks{}
	p.Add(plotter.NewGrid())
	var bins []plotter.HistogramBin
	for _, b := range buckets {
		bins = append(bins, plotter.HistogramBin{Min: b.LoUS, Max: b.HiUS, Weight: float64(b.Count)})
	}
	h := &plotter.Histogram{Bins: bins, FillColor: col, LineStyle: draw.LineStyle{Color: color.White, Width: vg.Points(0.5)}}
	p.Add(h)
	p.Y.Min = 0
	c.SVG = render(p, 700, 300)
	return c
}

// shade is the outage window drawn behind a chart's lines.
type shade struct{ from, to float64 }

var shadeColor = color.NRGBA{R: 214, G: 39, B: 40, A: 45}

func (s shade) Plot(c draw.Canvas, p *plot.Plot) {
	trX, _ := p.Transforms(&c)
	x0, x1 := trX(math.Max(s.from, p.X.Min)), trX(math.Min(s.to, p.X.Max))
	c.FillPolygon(shadeColor, []vg.Point{{X: x0, Y: c.Min.Y}, {X: x1, Y: c.Min.Y}, {X: x1, Y: c.Max.Y}, {X: x0, Y: c.Max.Y}})
}

func (s shade) Thumbnail(c *draw.Canvas) {
	c.FillPolygon(shadeColor, []vg.Point{c.Min, {X: c.Max.X, Y: c.Min.Y}, c.Max, {X: c.Min.X, Y: c.Max.Y}})
}

// durationTicks labels a logarithmic axis of microseconds at 1, 2 and 5
// times each power of ten, as durations.
type durationTicks struct{}

func (durationTicks) Ticks(lo, hi float64) []plot.Tick {
	var ticks []plot.Tick
	few := hi/lo < 300 // label 2 and 5 too when the axis spans few decades
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		for _, m := range []float64{1, 2, 5} {
			v := m * math.Pow(10, e)
			if v < lo || v > hi {
				continue
			}
			t := plot.Tick{Value: v}
			if m == 1 || few {
				t.Label = fmtDur(time.Duration(v * 1e3))
			}
			ticks = append(ticks, t)
		}
	}
	return ticks
}

// secondsTicks labels a time axis every 1, 2 or 5 × 10ⁿ seconds, about
// ten times across (at most 12).
type secondsTicks struct{}

func (secondsTicks) Ticks(lo, hi float64) []plot.Tick {
	if hi <= lo {
		return nil
	}
	raw := (hi - lo) / 12
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := 10 * mag
	for _, m := range []float64{1, 2, 5} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	decimals := max(0, int(-math.Floor(math.Log10(step))))
	var ticks []plot.Tick
	for k := math.Ceil(lo / step); k*step <= hi*(1+1e-9); k++ {
		ticks = append(ticks, plot.Tick{Value: k * step, Label: strconv.FormatFloat(k*step, 'f', decimals, 64) + "s"})
	}
	return ticks
}

// plainTicks are gonum's default ticks labelled without trailing zeros.
type plainTicks struct{}

func (plainTicks) Ticks(lo, hi float64) []plot.Tick {
	ticks := plot.DefaultTicks{}.Ticks(lo, hi)
	for i := range ticks {
		if ticks[i].Label != "" {
			ticks[i].Label = fmt.Sprintf("%.6g", ticks[i].Value)
		}
	}
	return ticks
}

var svgSizeRE = regexp.MustCompile(`^<svg width="[^"]*" height="[^"]*"`)

// render draws p as SVG, which the page scales to the width it gives it.
func render(p *plot.Plot, width, height float64) template.HTML {
	c := vgsvg.New(vg.Points(width), vg.Points(height))
	p.Draw(draw.New(c))
	var b bytes.Buffer
	if _, err := c.WriteTo(&b); err != nil {
		return template.HTML(template.HTMLEscapeString(fmt.Sprintf("chart failed: %v", err)))
	}
	svg := b.Bytes()
	if i := bytes.Index(svg, []byte("<svg")); i >= 0 {
		svg = svg[i:] // inline: no XML prolog
	}
	svg = svgSizeRE.ReplaceAll(svg, []byte(`<svg width="100%" preserveAspectRatio="xMinYMin meet"`))
	return template.HTML(svg) // drawn by gonum/plot from numbers and our own labels
}
