package model

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

// TrainConfig is the client trainer's configuration (the seed's lr, epochs,
// batch 4, shuffling, RandomRotation augmentation).
type TrainConfig struct {
	Epochs  int
	LR      float64
	Batch   int
	Seed    uint64
	Augment bool // RandomRotation(±20°), as the seed's training transforms

	// Progress, when set, is called after every epoch.
	Progress func(EpochStats)
	// Warn, when set, is told about images that were skipped.
	Warn func(string)
}

// Check refuses hyper-parameters that cannot train, before any work:
// a NaN, infinite or non-positive learning rate would end in NaN weights.
func (c TrainConfig) Check() error {
	if c.Epochs <= 0 || c.Epochs > maxEpochs {
		return fmt.Errorf("epochs must be 1..%d, got %d", maxEpochs, c.Epochs)
	}
	if !(c.LR > 0) || math.IsInf(c.LR, 0) {
		return fmt.Errorf("learning rate must be a positive finite number, got %v", c.LR)
	}
	if c.Batch <= 0 || c.Batch > MaxBatch {
		return fmt.Errorf("batch size must be 1..%d, got %d", MaxBatch, c.Batch)
	}
	return nil
}

const maxEpochs = 1 << 20

// EpochStats summarises one epoch.
type EpochStats struct {
	Epoch, Epochs int
	Loss          float64 // mean over batches
	Accuracy      float64 // on the training batches, in training mode
	Images        int
	Seconds       float64
}

// ImagesPerSecond is the epoch's throughput, decoding included.
func (s EpochStats) ImagesPerSecond() float64 { return float64(s.Images) / s.Seconds }

func (s EpochStats) String() string {
	return fmt.Sprintf("epoch %d/%d: loss %.4f, accuracy %.1f%%, %d images in %.1f s (%.1f images/s)",
		s.Epoch, s.Epochs, s.Loss, 100*s.Accuracy, s.Images, s.Seconds, s.ImagesPerSecond())
}

type batch struct {
	x       []float32
	labels  []int
	samples []Sample
	n       int
}

// batchStream delivers decoded, transformed batches; each batch's buffer
// goes back on free once the network is done with it.
type batchStream struct {
	out  <-chan batch
	free chan<- []float32
}

// loader2 decodes and transforms batches on its own goroutine, one batch
// ahead of the network, so that decoding overlaps with compute. Unreadable
// images are skipped and reported through warn.
func loader2(ctx context.Context, samples []Sample, order []int, size int, rng *rand.Rand, warn func(string), inSize, h, w int) batchStream {
	out := make(chan batch)
	free := make(chan []float32, 2)
	for i := 0; i < 2; i++ {
		free <- make([]float32, size*inSize)
	}
	go func() {
		defer close(out)
		i := 0
		for i < len(order) {
			var x []float32
			select {
			case x = <-free:
			case <-ctx.Done():
				return
			}
			b := batch{x: x}
			for b.n < size && i < len(order) {
				if ctx.Err() != nil {
					return
				}
				s := samples[order[i]]
				i++
				img, err := LoadRGB(s.Path)
				if err != nil {
					if warn != nil {
						warn(fmt.Sprintf("skipping %v", err))
					}
					continue
				}
				Transform(img, rng, x[b.n*inSize:(b.n+1)*inSize], h, w)
				b.labels = append(b.labels, s.Class)
				b.samples = append(b.samples, s)
				b.n++
			}
			if b.n == 0 {
				free <- x
				continue
			}
			if ctx.Err() != nil {
				return
			}
			select {
			case out <- b:
			case <-ctx.Done():
				return
			}
		}
	}()
	return batchStream{out: out, free: free}
}

// Train runs cfg.Epochs epochs of Adam on the samples and returns the number
// of batches per epoch (NVFlare's NUM_STEPS_CURRENT_ROUND). It stops with
// ctx's error when ctx is cancelled (checked every batch, like the seed's
// abort signal).
func Train(ctx context.Context, net *Net, samples []Sample, cfg TrainConfig) (int, error) {
	if cfg.Batch <= 0 || cfg.Batch > net.MaxBatch {
		return 0, fmt.Errorf("batch size %d (the net takes up to %d)", cfg.Batch, net.MaxBatch)
	}
	if len(samples) == 0 {
		return 0, fmt.Errorf("no training images")
	}
	if err := cfg.Check(); err != nil {
		return 0, err
	}
	h, w, err := net.Spec.ImageInput()
	if err != nil {
		return 0, err
	}
	classes := net.classes
	for _, s := range samples {
		if s.Class >= classes {
			return 0, fmt.Errorf("%s has class %d but the model has %d outputs", s.Path, s.Class, classes)
		}
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x5eed))
	opt := NewAdam(net.Params(), cfg.LR)
	graphs := graphCache{net: net, train: true}
	defer graphs.close()
	steps := 0
	for epoch := 1; epoch <= cfg.Epochs; epoch++ {
		start := time.Now()
		order := rng.Perm(len(samples))
		var augment *rand.Rand
		if cfg.Augment {
			augment = rand.New(rand.NewPCG(rng.Uint64(), 1))
		}
		ctx2, cancel := context.WithCancel(ctx)
		batches := loader2(ctx2, samples, order, cfg.Batch, augment, cfg.Warn, net.inSize, h, w)
		var lossSum float64
		var correct, images, nb int
		for {
			// Waiting on the loader must not hide a cancellation: it may be
			// stuck on a slow file.
			var b batch
			var ok bool
			select {
			case b, ok = <-batches.out:
			case <-ctx.Done():
				cancel()
				return 0, ctx.Err()
			}
			if !ok {
				break
			}
			gr, err := graphs.get(b.n)
			if err != nil {
				cancel()
				return 0, err
			}
			net.ZeroGrad()
			logits, loss, err := gr.Run(b.x[:b.n*net.inSize], b.labels)
			if err != nil {
				cancel()
				return 0, err
			}
			for i := 0; i < b.n; i++ {
				if argmax(logits[i*classes:(i+1)*classes]) == b.labels[i] {
					correct++
				}
			}
			if err := opt.Step(net.Params()); err != nil {
				cancel()
				return 0, err
			}
			batches.free <- b.x
			lossSum += loss
			images += b.n
			nb++
		}
		cancel()
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		if nb == 0 {
			return 0, fmt.Errorf("no image could be read")
		}
		steps = nb
		if cfg.Progress != nil {
			cfg.Progress(EpochStats{Epoch: epoch, Epochs: cfg.Epochs, Loss: lossSum / float64(nb),
				Accuracy: float64(correct) / float64(images), Images: images, Seconds: time.Since(start).Seconds()})
		}
	}
	return steps, nil
}

// graphCache keeps one Gorgonia graph per batch size seen (the full size
// and the last, smaller batch of an epoch).
type graphCache struct {
	net    *Net
	train  bool
	graphs map[int]*Graph
}

func (c *graphCache) get(n int) (*Graph, error) {
	if g, ok := c.graphs[n]; ok {
		return g, nil
	}
	g, err := c.net.NewGraph(n, c.train)
	if err != nil {
		return nil, err
	}
	if c.graphs == nil {
		c.graphs = map[int]*Graph{}
	}
	c.graphs[n] = g
	return g, nil
}

func (c *graphCache) close() {
	for _, g := range c.graphs {
		g.Close()
	}
}

func argmax(v []float32) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}

// Prediction is the network's output for one image.
type Prediction struct {
	Sample Sample
	Logits []float32
}

// Predict runs the samples through the net in evaluation mode with the
// deterministic transforms (no rotation). Unreadable images are skipped
// and reported through warn.
func Predict(ctx context.Context, net *Net, samples []Sample, batchSize int, warn func(string)) ([]Prediction, error) {
	if batchSize <= 0 || batchSize > net.MaxBatch {
		return nil, fmt.Errorf("batch size %d (the net takes up to %d)", batchSize, net.MaxBatch)
	}
	order := make([]int, len(samples))
	for i := range order {
		order[i] = i
	}
	h, w, err := net.Spec.ImageInput()
	if err != nil {
		return nil, err
	}
	classes := net.classes
	ctx2, cancel := context.WithCancel(ctx)
	defer cancel()
	batches := loader2(ctx2, samples, order, batchSize, nil, warn, net.inSize, h, w)
	graphs := graphCache{net: net}
	defer graphs.close()
	var out []Prediction
	for {
		var b batch
		var ok bool
		select {
		case b, ok = <-batches.out:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if !ok {
			break
		}
		gr, err := graphs.get(b.n)
		if err != nil {
			return nil, err
		}
		logits, _, err := gr.Run(b.x[:b.n*net.inSize], nil)
		if err != nil {
			return nil, err
		}
		for i := 0; i < b.n; i++ {
			out = append(out, Prediction{Sample: b.samples[i], Logits: append([]float32(nil), logits[i*classes:(i+1)*classes]...)})
		}
		batches.free <- b.x
	}
	return out, ctx.Err()
}
