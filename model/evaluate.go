package model

import (
	"context"
	"errors"
)

// Evaluation is a model's score on labelled images.
type Evaluation struct {
	Images   int     // images scored (unreadable ones are skipped)
	Correct  int     // images whose largest logit is their class
	Accuracy float64 // Correct / Images
	Loss     float64 // mean cross-entropy, the training loss's (CrossEntropy) over all images at once
}

// ErrNoImages is Evaluate's error when none of the images could be read.
var ErrNoImages = errors.New("no readable images")

// Evaluate scores the net on the samples, in evaluation mode with the
// deterministic transforms (as Predict runs it): the share of images whose
// largest logit (the first, on a tie) is their class, and the mean
// cross-entropy. Unreadable images are skipped and reported through warn;
// when none is left the error is ErrNoImages. A sample whose class the net
// has no output for is an error.
func Evaluate(ctx context.Context, net *Net, samples []Sample, batchSize int, warn func(string)) (*Evaluation, error) {
	preds, err := Predict(ctx, net, samples, batchSize, warn)
	if err != nil {
		return nil, err
	}
	if len(preds) == 0 {
		return nil, ErrNoImages
	}
	classes := len(preds[0].Logits)
	logits := make([]float32, 0, len(preds)*classes)
	labels := make([]int, len(preds))
	ev := &Evaluation{Images: len(preds)}
	for i, p := range preds {
		logits = append(logits, p.Logits...)
		labels[i] = p.Sample.Class
		if argmax(p.Logits) == p.Sample.Class {
			ev.Correct++
		}
	}
	if ev.Loss, err = CrossEntropy(logits, labels, classes, make([]float32, len(logits))); err != nil {
		return nil, err
	}
	ev.Accuracy = float64(ev.Correct) / float64(ev.Images)
	return ev, nil
}
