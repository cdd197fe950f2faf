package wan

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// cdfPoints is the most points drawn per curve: enough for a smooth step line, few
// enough to keep each PNG a few tens of KiB.
const cdfPoints = 400

// One curve per mode, in the order of modes: the direct link in black, the old
// forwarder dashed, the pair in colour.
var modeStyle = []struct {
	c    color.Color
	dash []vg.Length
}{
	{color.RGBA{0, 0, 0, 255}, nil},
	{color.RGBA{230, 120, 0, 255}, []vg.Length{vg.Points(5), vg.Points(3)}},
	{color.RGBA{0, 90, 200, 255}, nil},
	{color.RGBA{0, 150, 70, 255}, []vg.Length{vg.Points(2), vg.Points(2)}},
}

// plotCDF draws, for each mode that ran, the share of denom items (returns, chunks)
// answered within a latency, from that mode's sorted samples (ms). A mode that
// answered fewer than denom ends below 1; one that answered none lies on 0.
func plotCDF(path, title, ylabel string, rs []result) error {
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font.Size = vg.Points(11)
	p.X.Label.Text = "latency, s (log scale)"
	p.Y.Label.Text = ylabel
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = ticks125{}
	p.Y.Min, p.Y.Max = 0, 1.02
	p.Y.Tick.Marker = plot.ConstantTicks{{Value: 0, Label: "0"}, {Value: 0.25, Label: "0.25"}, {Value: 0.5, Label: "0.5"},
		{Value: 0.75, Label: "0.75"}, {Value: 0.9, Label: "0.9"}, {Value: 1, Label: "1"}}
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.TextStyle.Font.Size = vg.Points(9)
	p.Add(plotter.NewGrid())

	lo, hi := math.Inf(1), math.Inf(-1)
	for _, r := range rs {
		if len(r.samples) > 0 {
			lo, hi = math.Min(lo, r.samples[0]/1000), math.Max(hi, r.samples[len(r.samples)-1]/1000)
		}
	}
	if math.IsInf(lo, 0) {
		lo, hi = 0.1, 10
	}
	lo, hi = math.Max(lo, 1e-4), math.Max(hi, lo*1.1)
	p.X.Min, p.X.Max = lo, hi*1.05

	for i, r := range rs {
		if !r.ran {
			continue
		}
		xy := cdf(r.samples, r.denom, lo, hi*1.05)
		l, err := plotter.NewLine(xy)
		if err != nil {
			return fmt.Errorf("%s: %w", modes[i], err)
		}
		l.StepStyle = plotter.PostStep
		l.Color, l.Dashes, l.Width = modeStyle[i].c, modeStyle[i].dash, vg.Points(1.6)
		name := modes[i]
		if r.denom > 0 {
			name = fmt.Sprintf("%s (%d of %d)", modes[i], len(r.samples), r.denom)
		}
		p.Legend.Add(name, l)
		p.Add(l)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return p.Save(6.4*vg.Inch, 3.6*vg.Inch, path)
}

// cdf thins sorted samples (ms) to at most cdfPoints points (x in s, y the share of
// denom at or below x; denom 0: of the samples), from lo to hi.
func cdf(samples []float64, denom int, lo, hi float64) plotter.XYs {
	n := len(samples)
	if denom <= 0 {
		denom = max(n, 1)
	}
	xy := plotter.XYs{{X: lo, Y: 0}}
	step := max(1, n/cdfPoints)
	for i := 0; i < n; i += step {
		xy = append(xy, plotter.XY{X: math.Max(samples[i]/1000, lo), Y: float64(i+1) / float64(denom)})
	}
	if n > 0 {
		xy = append(xy, plotter.XY{X: math.Max(samples[n-1]/1000, lo), Y: float64(n) / float64(denom)})
	}
	return append(xy, plotter.XY{X: hi, Y: xy[len(xy)-1].Y})
}

// ticks125 labels 1, 2 and 5 times each power of ten in range, as a log axis over a
// few decades reads best.
type ticks125 struct{}

func (ticks125) Ticks(lo, hi float64) []plot.Tick {
	var ts []plot.Tick
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		for _, m := range []float64{1, 2, 5} {
			v := m * math.Pow(10, e)
			if v < lo || v > hi {
				continue
			}
			ts = append(ts, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'g', -1, 64)})
		}
	}
	return ts
}
