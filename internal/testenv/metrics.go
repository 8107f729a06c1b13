package testenv

import (
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Samples are one scrape of a Prometheus text endpoint: each sample's
// value by its series, `name{label="value",...}` with the labels sorted
// (a histogram gives name_count and name_sum).
type Samples map[string]float64

// Series names a sample: name and label pairs (name, value, ...).
func Series(name string, labels ...string) string {
	var pairs []string
	for i := 0; i+1 < len(labels); i += 2 {
		pairs = append(pairs, fmt.Sprintf("%s=%q", labels[i], labels[i+1]))
	}
	sort.Strings(pairs)
	return name + "{" + strings.Join(pairs, ",") + "}"
}

// Get is the value of a series (0 when absent).
func (s Samples) Get(name string, labels ...string) float64 { return s[Series(name, labels...)] }

// Scrape reads url (a /metrics endpoint) and parses what it answers.
func Scrape(t testing.TB, url string) Samples {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scraping %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("scraping %s: %s\n%s", url, resp.Status, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing %s: %v", url, err)
	}
	out := Samples{}
	for name, f := range families {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName(), l.GetValue())
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				out[Series(name, labels...)] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[Series(name, labels...)] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[Series(name+"_count", labels...)] = float64(m.GetHistogram().GetSampleCount())
				out[Series(name+"_sum", labels...)] = m.GetHistogram().GetSampleSum()
			default:
				out[Series(name, labels...)] = m.GetUntyped().GetValue()
			}
		}
	}
	return out
}

// Delta is what each series of after gained since before, for the
// series whose name starts with prefix; series that did not change are
// left out.
func Delta(before, after Samples, prefix string) map[string]float64 {
	out := map[string]float64{}
	for k, v := range after {
		if strings.HasPrefix(k, prefix) && v != before[k] {
			out[k] = v - before[k]
		}
	}
	return out
}
