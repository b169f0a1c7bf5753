package model

import (
	"math/rand/v2"
	"testing"
)

func benchNet(b *testing.B, batch int) (*Net, []float32, []int) {
	sd, err := Init(PneumoniaSpec(), 1)
	if err != nil {
		b.Fatal(err)
	}
	net, err := NewNet(PneumoniaSpec(), sd, batch)
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	x := make([]float32, batch*3*224*224)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	y := make([]int, batch)
	for i := range y {
		y[i] = i % 2
	}
	return net, x, y
}

func benchTrain(b *testing.B, batch int) {
	net, x, y := benchNet(b, batch)
	opt := NewAdam(net.Params(), 0.001)
	grad := make([]float32, batch*2)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		logits, _ := net.Forward(x, batch, true)
		CrossEntropy(logits, y, 2, grad)
		net.ZeroGrad()
		net.Backward(grad, batch)
		opt.Step(net.Params())
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "img/s")
}

func benchInfer(b *testing.B, batch int) {
	net, x, _ := benchNet(b, batch)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		net.Forward(x, batch, false)
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "img/s")
}

func benchTrainGraph(b *testing.B, batch int) {
	net, x, y := benchNet(b, batch)
	opt := NewAdam(net.Params(), 0.001)
	gr, err := net.NewGraph(batch, true)
	if err != nil {
		b.Fatal(err)
	}
	defer gr.Close()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		net.ZeroGrad()
		if _, _, err := gr.Run(x, y); err != nil {
			b.Fatal(err)
		}
		opt.Step(net.Params())
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "img/s")
}

func benchInferGraph(b *testing.B, batch int) {
	net, x, _ := benchNet(b, batch)
	gr, err := net.NewGraph(batch, false)
	if err != nil {
		b.Fatal(err)
	}
	defer gr.Close()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, _, err := gr.Run(x, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "img/s")
}

func BenchmarkTrainGraphBatch4(b *testing.B) { benchTrainGraph(b, 4) }
func BenchmarkInferGraphBatch4(b *testing.B) { benchInferGraph(b, 4) }
func BenchmarkTrainBatch4(b *testing.B)      { benchTrain(b, 4) }
func BenchmarkTrainBatch16(b *testing.B)     { benchTrain(b, 16) }
func BenchmarkInferBatch4(b *testing.B)      { benchInfer(b, 4) }
