package main

import "testing"

// One cause is one row of the error table, whatever session, wait or
// clock time its messages carry.
func TestNormalizeErrorOneRowPerCause(t *testing.T) {
	a := normalizeError(`session "load-000001": provider "p0": credential failed: outage; next try in 9s (at 15:20:24 UTC)`)
	b := normalizeError(`session "load-000042": provider "p0": credential failed: outage; next try in 7s (at 15:20:25 UTC)`)
	if a != b {
		t.Fatalf("one cause, two rows:\n%s\n%s", a, b)
	}
	if c := normalizeError(`session "load-000001": provider "p0": timed out: credential did not answer within 30s`); c == a {
		t.Fatalf("two causes, one row: %s", c)
	}
}
