package model

import "testing"

// FuzzSpec: whatever a spec file holds, ParseSpec and the shape checks
// return an error or a spec whose net builds and runs without a panic.
func FuzzSpec(f *testing.F) {
	b, _ := PneumoniaSpec().Marshal()
	f.Add(b)
	for _, s := range []string{
		`{"input":[3,8,8],"layers":[{"op":"conv2d","name":"c","out":2,"kernel":3,"padding":1},{"op":"batchnorm2d","name":"bn"},{"op":"relu"},{"op":"maxpool2d","kernel":2},{"op":"dropout","p":0.5},{"op":"flatten"},{"op":"linear","name":"fc","out":2}]}`,
		`{"input":[3,3,3],"layers":[{"op":"maxpool2d","kernel":4},{"op":"flatten"},{"op":"linear","name":"fc","out":2}]}`,
		`{"input":[3,3,3],"layers":[{"op":"conv2d","name":"c","out":2,"kernel":4,"stride":2},{"op":"flatten"},{"op":"linear","name":"fc","out":2}]}`,
		`{"input":[3,5,7],"layers":[{"op":"conv2d","name":"c","out":1,"kernel":5,"stride":3,"padding":2},{"op":"maxpool2d","kernel":2,"stride":1},{"op":"flatten"},{"op":"linear","name":"fc","out":1}]}`,
		`{"input":[1,28,28],"layers":[{"op":"flatten"},{"op":"linear","name":"fc","out":2}]}`,
		`{"input":[3,8,8],"layers":[{"op":"maxpool2d","kernel":2,"stride":-1},{"op":"flatten"},{"op":"linear","name":"fc","out":2}]}`,
		`{"input":[3,8,8],"layers":[{"op":"flatten"},{"op":"linear","name":"fc","out":16000000}]}`,
		`{"input":[65536,65536,65536],"layers":[{"op":"flatten"}]}`,
		`{"input":[3,8,8],"layers":[{"op":"relu"},{"op":"flatten"},{"op":"flatten"},{"op":"linear","name":"a","out":3},{"op":"relu"},{"op":"linear","name":"b","out":2}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseSpec(data)
		if err != nil {
			return
		}
		ps, err := s.Params()
		if err != nil {
			t.Fatalf("Params after a valid spec: %v", err)
		}
		s.ImageInput()
		// Build and run only nets small enough for a fuzz iteration.
		shapes, _ := s.Shapes()
		if bufferBytes(s, shapes, 2) > 64<<20 || len(ps) > 64 {
			return
		}
		sd, err := Init(s, 1)
		if err != nil {
			t.Fatal(err)
		}
		net, err := NewNet(s, sd, 2)
		if err != nil {
			t.Fatal(err)
		}
		x := make([]float32, 2*shapeSize(s.Input))
		logits, err := net.Forward(x, 2, true)
		if err != nil {
			t.Fatal(err)
		}
		if len(logits) != 2*net.classes {
			t.Fatalf("%d logits for 2 images of %d classes", len(logits), net.classes)
		}
		net.Backward(make([]float32, len(logits)), 2)
	})
}
