package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/color"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"gonum.org/v1/plot/plotter"
)

// findChromium returns a headless-capable Chromium, or skips the test; with
// TOKENBROKER_REQUIRE_BROWSER=1 (make test) a missing browser fails it.
func findChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("TOKENBROKER_REQUIRE_BROWSER") == "1" {
		t.Fatal("no chromium on PATH and TOKENBROKER_REQUIRE_BROWSER=1: `make test` installs Debian's chromium")
	}
	t.Skip("no chromium on PATH (make test installs it)")
	return ""
}

// renderedChart is what the browser laid out for one figure.
type renderedChart struct {
	ID       string         `json:"id"`
	Width    float64        `json:"width"`  // of the SVG, in CSS pixels
	Height   float64        `json:"height"` //
	Lines    int            `json:"lines"`  // visible stroked or filled paths of data
	Shades   int            `json:"shades"` // translucent areas the width of a window
	NoData   bool           `json:"noData"`
	Baseline float64        `json:"baseline"` // y of the value 0: the lowest horizontal grid line
	Paths    []renderedPath `json:"paths"`    // the data paths counted in Lines
}

// renderedPath is one data path's colour and vertical extent (CSS pixels,
// y growing downwards).
type renderedPath struct {
	Color  string  `json:"color"`
	Top    float64 `json:"top"`
	Bottom float64 `json:"bottom"`
}

// hexColors is colours as vgsvg writes them (#RRGGBB).
func hexColors(cs []color.Color) []string {
	var out []string
	for _, c := range cs {
		r, g, b, _ := c.RGBA()
		out = append(out, fmt.Sprintf("#%02X%02X%02X", r>>8, g>>8, b>>8))
	}
	return out
}

// measure runs in the browser: every figure, its SVG's box, its data
// paths (in a chart colour, larger than a legend's swatch can be) with
// their colour and extent, the grid line at 0 and how many translucent
// window-sized areas the browser actually laid out.
func measure() string {
	colors, _ := json.Marshal(append(hexColors(palette), hexColors(inFlightPalette)...))
	grid := hexColors([]color.Color{plotter.DefaultGridLineStyle.Color})[0]
	return `(() => { const data = ` + string(colors) + `, grid = "` + grid + `";
const colorOf = (st, k) => ((st.match(new RegExp("(?:^|;)" + k + ":(#[0-9A-Fa-f]{6})")) || [])[1] || "").toUpperCase();
return [...document.querySelectorAll("figure.chart")].map(f => {
  const svg = f.querySelector("svg");
  const r = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  let lines = 0, shades = 0, baseline = 0; const paths = [];
  if (svg) for (const p of svg.querySelectorAll("path")) {
    const b = p.getBoundingClientRect(), st = p.getAttribute("style") || "";
    const op = parseFloat((st.match(/fill-opacity:([0-9.]+)/) || [])[1] || "1");
    const stroke = colorOf(st, "stroke"), fill = colorOf(st, "fill");
    if (stroke === grid && b.height < 1 && b.width > r.width / 2) baseline = Math.max(baseline, b.top + b.height / 2);
    if (op < 0.5 && b.width > 20 && b.height > 50) shades++;
    else if ((data.includes(stroke) || data.includes(fill)) && (b.width > r.width / 20 || b.height > r.height / 5)) {
      lines++;
      paths.push({color: data.includes(stroke) ? stroke : fill, top: b.top, bottom: b.bottom});
    }
  }
  return {id: f.id, width: r.width, height: r.height, lines, shades, noData: !!f.querySelector(".nodata"), baseline, paths};
}); })()`
}

// inFlightCharts are the charts of counts (and ages) in flight, each with
// the series it draws.
var inFlightCharts = map[string]func(point) float64{
	"credential-in-flight": func(p point) float64 { return float64(p.CredPeak[0]) },
	"in-flight":            func(p point) float64 { return float64(p.InFlight) },
	"oldest":               func(p point) float64 { return p.OldestS },
}

// TestReportInBrowser renders the report of short runs with an outage, in
// the closed and the open loop, in headless Chromium and checks that every
// chart is there, laid out full width, drawn (not empty), that every chart
// over time shades the outage, and that each line of counts in flight is
// drawn in a colour of its own and visibly above the baseline wherever the
// run had some in flight.
func TestReportInBrowser(t *testing.T) {
	chromium := findChromium(t)
	for _, loop := range []struct {
		name string
		args []string
	}{
		{"closed", []string{"-concurrency", "4"}},
		{"open", []string{"-concurrency", "4", "-rate", "200"}},
	} {
		t.Run(loop.name, func(t *testing.T) {
			prefix := filepath.Join(t.TempDir(), "browser")
			var stdout, stderr bytes.Buffer
			// Credential calls take 20 ms, so some are in flight at the
			// cold start and at each retry after the outage.
			args := append([]string{"-sessions", "8", "-duration", "1500ms", "-interval", "100ms", "-cred-latency", "20ms",
				"-outage", "400ms@500ms", "-backoff-max", "100ms", "-trace", "file:" + filepath.Join(t.TempDir(), "spans"),
				"-out", prefix}, loop.args...)
			if code := run(context.Background(), args, &stdout, &stderr, false); code != exitOK {
				t.Fatalf("exit %d: %s", code, stderr.String())
			}
			r := report(t, prefix)
			checkInBrowser(t, chromium, prefix, r)
		})
	}
}

func checkInBrowser(t *testing.T, chromium, prefix string, r *result) {
	actx, cancel := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromium), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1400, 1000))
	defer cancel()
	ctx, cancelTab := chromedp.NewContext(actx)
	defer cancelTab()
	ctx, cancelTime := context.WithTimeout(ctx, 60*time.Second)
	defer cancelTime()
	if err := chromedp.Do(ctx, chromedp.Navigate("file://"+prefix+".html")); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	title, err := chromedp.Run(ctx, chromedp.Title())
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	charts, err := chromedp.Run(ctx, chromedp.Evaluate[[]renderedChart](measure()))
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	if title != "tokenload report" {
		t.Errorf("title %q", title)
	}
	overTimeIDs, histograms := wantCharts(r)
	overTime := map[string]bool{}
	for _, id := range overTimeIDs {
		overTime[id] = true
	}
	want := append(overTimeIDs, histograms...)
	got := map[string]renderedChart{}
	for _, c := range charts {
		got[c.ID] = c
	}
	if len(charts) != len(want) {
		t.Errorf("%d charts in the page, want %d: %+v", len(charts), len(want), charts)
	}
	rates := hexColors(palette)
	flightColors := hexColors(inFlightPalette)
	for _, id := range want {
		c, ok := got[id]
		switch {
		case !ok:
			t.Errorf("chart %s missing", id)
		case c.NoData:
			t.Errorf("chart %s says no data, but the run has data for it (%d turns, %d requests)", id, r.Turns, r.Requests)
		case c.Width < 400 || c.Height < 100 || c.Lines == 0:
			t.Errorf("chart %s laid out %.0fx%.0f with %d visible lines: empty", id, c.Width, c.Height, c.Lines)
		case overTime[id] && id != "errors" && c.Width < 1200:
			t.Errorf("chart %s is %.0f px wide in a 1400 px window, want full width", id, c.Width)
		case overTime[id] && c.Shades == 0:
			t.Errorf("chart %s does not shade the outage", id)
		}
		t.Logf("%s: %+v", id, c)
		value := inFlightCharts[id]
		if !ok || value == nil {
			continue
		}
		peak := 0.0
		for _, p := range r.Series {
			peak = max(peak, value(p))
		}
		if peak == 0 {
			// The closed loop always has its requesters' operations in
			// flight, and the cold start its credential calls; the open
			// loop's short turns may all have ended at every tick.
			if r.Config.Rate == 0 || id == "credential-in-flight" {
				t.Errorf("chart %s: the run had nothing in flight; the check needs some", id)
			}
			continue
		}
		if c.Baseline == 0 {
			t.Errorf("chart %s: no grid line at 0 found", id)
		}
		drawn := false
		for _, p := range c.Paths {
			if slices.Contains(rates, p.Color) {
				t.Errorf("chart %s: a line in %s, a rate's colour", id, p.Color)
			}
			if !slices.Contains(flightColors, p.Color) {
				continue
			}
			drawn = true
			// The line's highest point: the peak, which must stand clear
			// of the baseline.
			if c.Baseline-p.Top <= 1 {
				t.Errorf("chart %s: the in-flight line (peak %g) tops out at y=%.1f, within a pixel of the baseline at %.1f", id, peak, p.Top, c.Baseline)
			}
		}
		if !drawn {
			t.Errorf("chart %s: no line in an in-flight colour", id)
		}
	}
}
