//go:build noreport

package main

import "errors"

// report is left out of builds tagged noreport, as the container image's
// is: gonum/plot and its fonts are a quarter of the binary, and a
// container writes event files (to /tb-logs) for a report drawn elsewhere.
func (c *command) report(args []string) error {
	return errors.New("this flarego was built without the report (-tags noreport, as the container image is, to keep it small): run 'flarego report' on the /tb-logs files outside the container")
}
