package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
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
	ID     string  `json:"id"`
	Width  float64 `json:"width"`  // of the SVG, in CSS pixels
	Height float64 `json:"height"` //
	Lines  int     `json:"lines"`  // visible stroked or filled paths of data
	Shades int     `json:"shades"` // translucent areas the width of a window
	NoData bool    `json:"noData"`
}

// paletteHex is the charts' data colours as vgsvg writes them (#RRGGBB).
func paletteHex() []string {
	var out []string
	for _, c := range palette {
		r, g, b, _ := c.RGBA()
		out = append(out, fmt.Sprintf("#%02X%02X%02X", r>>8, g>>8, b>>8))
	}
	return out
}

// measure runs in the browser: every figure, its SVG's box, how many data
// paths (in a chart colour, larger than a legend's swatch can be) and how many
// translucent window-sized areas the browser actually laid out.
func measure() string {
	colors, _ := json.Marshal(paletteHex())
	return `(() => { const data = ` + string(colors) + `;
const colorOf = (st, k) => ((st.match(new RegExp("(?:^|;)" + k + ":(#[0-9A-Fa-f]{6})")) || [])[1] || "").toUpperCase();
return [...document.querySelectorAll("figure.chart")].map(f => {
  const svg = f.querySelector("svg");
  const r = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  let lines = 0, shades = 0;
  if (svg) for (const p of svg.querySelectorAll("path")) {
    const b = p.getBoundingClientRect(), st = p.getAttribute("style") || "";
    const op = parseFloat((st.match(/fill-opacity:([0-9.]+)/) || [])[1] || "1");
    if (op < 0.5 && b.width > 20 && b.height > 50) shades++;
    else if ((data.includes(colorOf(st, "stroke")) || data.includes(colorOf(st, "fill"))) && (b.width > r.width / 20 || b.height > r.height / 5)) lines++;
  }
  return {id: f.id, width: r.width, height: r.height, lines, shades, noData: !!f.querySelector(".nodata")};
}); })()`
}

// TestReportInBrowser renders the report of a short run with an outage
// in headless Chromium and checks that every chart is there, laid out full
// width, drawn (not empty), and that every chart over time shades the
// outage.
func TestReportInBrowser(t *testing.T) {
	chromium := findChromium(t)
	prefix := filepath.Join(t.TempDir(), "browser")
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"-sessions", "8", "-concurrency", "4", "-duration", "1500ms", "-interval", "100ms",
		"-outage", "400ms@500ms", "-backoff-max", "100ms", "-trace", "file:" + filepath.Join(t.TempDir(), "spans"),
		"-out", prefix}, &stdout, &stderr, false); code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	r := report(t, prefix)

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
	overTime := map[string]bool{"credential-calls": true, "token-requests": true, "token-latency": true, "turns": true, "turn-latency": true, "errors": true}
	want := []string{"credential-calls", "token-requests", "token-latency", "turns", "turn-latency", "errors", "token-latency-histogram", "turn-latency-histogram"}
	got := map[string]renderedChart{}
	for _, c := range charts {
		got[c.ID] = c
	}
	if len(charts) != len(want) {
		t.Errorf("%d charts in the page, want %d: %+v", len(charts), len(want), charts)
	}
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
	}
}
