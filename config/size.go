package config

import (
	"errors"
	"strconv"
	"strings"
)

// ParseSize reads a size such as 1048576, 500M, 500MiB, 50G or 1.5T. K, M,
// G and T are powers of 1024, with or without "iB"; "KB", "MB"... are
// powers of 1000.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := 1.0
	units := []struct {
		suffix string
		mult   float64
	}{
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
		{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
		{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}, {"B", 1},
	}
	upper := strings.ToUpper(t)
	for _, u := range units { // longest suffixes first
		if strings.HasSuffix(upper, strings.ToUpper(u.suffix)) {
			t, mult = strings.TrimSpace(t[:len(t)-len(u.suffix)]), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f < 0 || f*mult > 1<<62 {
		return 0, errors.New("bad size " + strconv.Quote(s))
	}
	return int64(f * mult), nil
}

// ParseRate reads a transfer rate in bytes per second: a size as
// ParseSize reads it, with or without "/s" (10M, 10MiB/s, 500KB/s), or
// bits per second as links are sold (100Mbit, 1Gbit/s, 512kbit). 0 and
// "off" mean no limit.
func ParseRate(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSpace(s), "/s")
	if strings.EqualFold(t, "off") {
		return 0, nil
	}
	lower := strings.ToLower(t)
	for _, u := range []struct {
		suffix string
		bits   float64
	}{{"kbit", 1e3}, {"mbit", 1e6}, {"gbit", 1e9}, {"bit", 1}} {
		if strings.HasSuffix(lower, u.suffix) {
			f, err := strconv.ParseFloat(strings.TrimSpace(t[:len(t)-len(u.suffix)]), 64)
			if err != nil || f < 0 || f*u.bits/8 > 1<<50 {
				return 0, errors.New("bad rate " + strconv.Quote(s))
			}
			return int64(f * u.bits / 8), nil
		}
	}
	n, err := ParseSize(t)
	if err != nil {
		return 0, errors.New("bad rate " + strconv.Quote(s))
	}
	return n, nil
}
