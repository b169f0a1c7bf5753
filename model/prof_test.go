package model

import (
	"fmt"
	"testing"
	"time"
)

// TestLayerTimes prints where a training step spends its time (go test -run LayerTimes -v).
func TestLayerTimes(t *testing.T) {
	if !testing.Verbose() {
		return // a report, not a check
	}
	sd, _ := Init(PneumoniaSpec(), 1)
	net, _ := NewNet(PneumoniaSpec(), sd, 4)
	x := make([]float32, 4*3*224*224)
	for i := range x {
		x[i] = float32(i%7) - 3
	}
	fw := make([]time.Duration, len(net.layers))
	bw := make([]time.Duration, len(net.layers))
	for it := 0; it < 6; it++ {
		h := x
		outs := make([][]float32, len(net.layers))
		for i, l := range net.layers {
			t0 := time.Now()
			h = l.forward(h, 4, true)
			fw[i] += time.Since(t0)
			outs[i] = h
		}
		dy := make([]float32, 8)
		for i := range dy {
			dy[i] = 0.1
		}
		var d []float32 = dy
		for i := len(net.layers) - 1; i >= 0 && d != nil; i-- {
			t0 := time.Now()
			d = net.layers[i].backward(d, 4)
			bw[i] += time.Since(t0)
		}
	}
	for i, l := range net.Spec.Layers {
		fmt.Printf("%-12s %-6s fw %6.1fms bw %6.1fms\n", l.Op, l.Name, float64(fw[i].Microseconds())/6000, float64(bw[i].Microseconds())/6000)
	}
}
