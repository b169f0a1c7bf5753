package model

import "image"

// ycbcrToRGB converts a decoded JPEG as libjpeg-turbo (and so PIL) does:
// "fancy" triangular upsampling of 4:2:0 and 4:2:2 chroma and the
// fixed-point YCbCr→RGB tables of jdcolor.c. Go's own conversion samples the
// nearest chroma value, which differs by up to ~100 levels at colour edges.
// Other subsampling ratios return nil (the caller falls back).
func ycbcrToRGB(m *image.YCbCr) *RGB {
	b := m.Bounds()
	w, h := b.Dx(), b.Dy()
	var up func(plane []uint8, stride, cw, ch int) []uint8
	switch m.SubsampleRatio {
	case image.YCbCrSubsampleRatio444:
		up = func(plane []uint8, stride, cw, ch int) []uint8 {
			out := make([]uint8, w*h)
			for y := 0; y < h; y++ {
				copy(out[y*w:(y+1)*w], plane[y*stride:])
			}
			return out
		}
	case image.YCbCrSubsampleRatio422:
		up = func(plane []uint8, stride, cw, ch int) []uint8 {
			out := make([]uint8, w*h)
			row := make([]uint8, 2*cw)
			for y := 0; y < h; y++ {
				h2v1(plane[y*stride:y*stride+cw], row)
				copy(out[y*w:(y+1)*w], row)
			}
			return out
		}
	case image.YCbCrSubsampleRatio420:
		up = func(plane []uint8, stride, cw, ch int) []uint8 {
			out := make([]uint8, w*h)
			row := make([]uint8, 2*cw)
			for y := 0; y < h; y++ {
				r := y / 2
				other := r - 1 // the upper output row of a pair leans on the row above
				if y%2 == 1 {
					other = r + 1
				}
				other = min(max(other, 0), ch-1)
				h2v2(plane[r*stride:r*stride+cw], plane[other*stride:other*stride+cw], row)
				copy(out[y*w:(y+1)*w], row)
			}
			return out
		}
	default:
		return nil
	}
	cw, ch := (w+1)/2, (h+1)/2
	if m.SubsampleRatio == image.YCbCrSubsampleRatio444 {
		cw, ch = w, h
	} else if m.SubsampleRatio == image.YCbCrSubsampleRatio422 {
		ch = h
	}
	if m.Rect.Min != (image.Point{}) {
		return nil
	}
	cb := up(m.Cb, m.CStride, cw, ch)
	cr := up(m.Cr, m.CStride, cw, ch)
	out := &RGB{W: w, H: h, Pix: make([]uint8, 3*w*h)}
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			yy := int32(m.Y[y*m.YStride+x])
			i := y*w + x
			cbv, crv := int32(cb[i])-128, int32(cr[i])-128
			r := yy + ((91881*crv + 32768) >> 16)
			g := yy + ((-22554*cbv - 46802*crv + 32768) >> 16)
			bl := yy + ((116130*cbv + 32768) >> 16)
			out.Pix[3*i], out.Pix[3*i+1], out.Pix[3*i+2] = clampU8(r), clampU8(g), clampU8(bl)
		}
	}
	return out
}

func clampU8(v int32) uint8 { return uint8(min(max(v, 0), 255)) }

// h2v1 is jdsample.c's h2v1_fancy_upsample for one row.
func h2v1(in, out []uint8) {
	n := len(in)
	if n == 1 {
		out[0], out[1] = in[0], in[0]
		return
	}
	out[0] = in[0]
	out[1] = uint8((int(in[0])*3 + int(in[1]) + 2) >> 2)
	for i := 1; i < n-1; i++ {
		v := int(in[i]) * 3
		out[2*i] = uint8((v + int(in[i-1]) + 1) >> 2)
		out[2*i+1] = uint8((v + int(in[i+1]) + 2) >> 2)
	}
	out[2*n-2] = uint8((int(in[n-1])*3 + int(in[n-2]) + 1) >> 2)
	out[2*n-1] = in[n-1]
}

// h2v2 is jdsample.c's h2v2_fancy_upsample for one output row: in0 is the
// chroma row it belongs to, in1 the nearest other one.
func h2v2(in0, in1, out []uint8) {
	n := len(in0)
	sum := func(i int) int { return int(in0[i])*3 + int(in1[i]) }
	if n == 1 {
		v := uint8((sum(0)*4 + 8) >> 4)
		out[0], out[1] = v, v
		return
	}
	this, next := sum(0), sum(1)
	out[0] = uint8((this*4 + 8) >> 4)
	out[1] = uint8((this*3 + next + 7) >> 4)
	last := this
	this = next
	for i := 1; i < n-1; i++ {
		next = sum(i + 1)
		out[2*i] = uint8((this*3 + last + 8) >> 4)
		out[2*i+1] = uint8((this*3 + next + 7) >> 4)
		last, this = this, next
	}
	out[2*n-2] = uint8((this*3 + last + 8) >> 4)
	out[2*n-1] = uint8((this*4 + 7) >> 4)
}
