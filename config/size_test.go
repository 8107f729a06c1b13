package config

import "testing"

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		bad  bool
	}{
		{in: "1048576", want: 1 << 20},
		{in: "500MiB", want: 500 << 20},
		{in: "500M", want: 500 << 20},
		{in: "500mb", want: 500e6},
		{in: "50G", want: 50 << 30},
		{in: "1.5T", want: 3 << 39},
		{in: "100B", want: 100},
		{in: " 2 KiB ", want: 2048},
		{in: "lots", bad: true},
		{in: "-1G", bad: true},
		{in: "9999999T", bad: true},
	} {
		got, err := ParseSize(tc.in)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d (error: %v)", tc.in, got, err, tc.want, tc.bad)
		}
	}
}

func TestParseRate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		bad  bool
	}{
		{in: "10M", want: 10 << 20},
		{in: "10MiB/s", want: 10 << 20},
		{in: "10MB/s", want: 10e6},
		{in: "100Mbit", want: 12_500_000},
		{in: "1Gbit/s", want: 125_000_000},
		{in: "512kbit", want: 64_000},
		{in: "off", want: 0},
		{in: "0", want: 0},
		{in: "fast", bad: true},
		{in: "-1Mbit", bad: true},
	} {
		got, err := ParseRate(tc.in)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d (error: %v)", tc.in, got, err, tc.want, tc.bad)
		}
	}
}
