package persistor

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"time"

	"github.com/fernet/fernet-go"
)

// Token layout: 0x80 | timestamp (8, big endian) | IV (16) | AES-128-CBC ciphertext | HMAC-SHA256 (32),
// all in padded URL-safe base64.
const (
	tokenVersion  = 0x80
	headerLen     = 1 + 8 + aes.BlockSize
	macLen        = sha256.Size
	minTokenBytes = headerLen + aes.BlockSize + macLen
	maxClockSkew  = 60 * time.Second

	// Tokens up to this size go through fernet-go; larger ones through the
	// streaming path, which needs one copy of the plaintext instead of three.
	smallToken = 1 << 20
)

// NoTTL turns off the age check, like ttl=None in cryptography's Fernet.
const NoTTL time.Duration = -1

var (
	// ErrInvalidToken reports a token that is malformed, was altered, or was
	// made with another key. As in cryptography, these cases are not told apart
	// beyond the reason in the message.
	ErrInvalidToken = errors.New("invalid Fernet token")
	// ErrTokenExpired reports a token older than the TTL the caller asked for.
	ErrTokenExpired = errors.New("expired Fernet token")
	// ErrTokenFromFuture reports a token signed more than 60 s ahead of the
	// local clock (checked only with a TTL, as cryptography does).
	ErrTokenFromFuture = errors.New("future-dated Fernet token")
)

func invalid(reason string) error { return fmt.Errorf("%w: %s", ErrInvalidToken, reason) }

// Encrypt returns the Fernet token of plaintext under k, timestamped now.
func Encrypt(plaintext []byte, k *Key) ([]byte, error) {
	if len(plaintext) <= smallToken {
		return fernet.EncryptAndSignAtTime(plaintext, &k.k, time.Now())
	}
	var buf bytes.Buffer
	buf.Grow(base64.URLEncoding.EncodedLen(headerLen + len(plaintext) + aes.BlockSize + macLen))
	enc, err := NewEncrypter(&buf, k)
	if err != nil {
		return nil, err
	}
	if _, err := enc.Write(plaintext); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Decrypt verifies token against each key in turn and returns the plaintext.
// It accepts exactly what cryptography's Fernet.decrypt accepts: either base64
// alphabet, whitespace anywhere, nothing after the padding. ttl is the maximum
// age (NoTTL for none; 0 means "signed this second", as in Python).
func Decrypt(token []byte, ttl time.Duration, keys ...*Key) ([]byte, error) {
	return decryptAt(token, ttl, time.Now(), keys)
}

func decryptAt(token []byte, ttl time.Duration, now time.Time, keys []*Key) ([]byte, error) {
	if len(keys) == 0 {
		return nil, errors.New("decrypting: no key given")
	}
	raw, err := decodeToken(bytes.Clone(token))
	if err != nil {
		return nil, err
	}
	if err := checkToken(raw, ttl, now); err != nil {
		return nil, err
	}
	if len(raw) <= smallToken {
		// fernet-go needs the canonical text form; the checks above guarantee
		// it cannot panic on an empty ciphertext.
		canon := base64.URLEncoding.EncodeToString(raw)
		fks := make([]*fernet.Key, len(keys))
		for i, k := range keys {
			fks[i] = &k.k
		}
		if msg := fernet.VerifyAndDecrypt([]byte(canon), 0, fks); msg != nil {
			return msg, nil
		}
		return nil, invalid("signature or padding does not match any key (wrong key or altered token)")
	}
	return openInPlace(raw, keys)
}

// decodeToken turns token text into token bytes, in place. Whitespace is
// dropped and '+' and '/' are read as '-' and '_', as Python's
// urlsafe_b64decode does; anything else outside the alphabet is an error.
func decodeToken(text []byte) ([]byte, error) {
	text = appendNormalized(text[:0], text)
	if len(text) == 0 {
		return nil, invalid("token is empty")
	}
	// Decode in chunks into a small buffer and copy down: the output never
	// overtakes the input, so one buffer holds both.
	var tmp [3 * 1024]byte
	out := 0
	for in := 0; in < len(text); {
		end := min(in+4*1024, len(text))
		n, err := base64.URLEncoding.Decode(tmp[:], text[in:end])
		if err != nil {
			var ce base64.CorruptInputError
			if errors.As(err, &ce) {
				return nil, invalid(fmt.Sprintf("not base64 at character %d", in+int(ce)))
			}
			return nil, invalid("not base64")
		}
		if end < len(text) && n != 3*1024 {
			return nil, invalid("data after base64 padding")
		}
		copy(text[out:], tmp[:n])
		out += n
		in = end
	}
	return text[:out], nil
}

// checkToken applies cryptography's checks in its order: version, TTL, length.
func checkToken(raw []byte, ttl time.Duration, now time.Time) error {
	if len(raw) < 9 || raw[0] != tokenVersion {
		return invalid("not a Fernet token (bad version byte or too short)")
	}
	if ttl >= 0 {
		ts := int64(binary.BigEndian.Uint64(raw[1:9]))
		cur := now.Unix()
		if ts+int64(ttl/time.Second) < cur {
			return fmt.Errorf("%w: signed at %s, TTL %s", ErrTokenExpired, time.Unix(ts, 0).UTC().Format(time.RFC3339), ttl)
		}
		if cur+int64(maxClockSkew/time.Second) < ts {
			return fmt.Errorf("%w: signed at %s", ErrTokenFromFuture, time.Unix(ts, 0).UTC().Format(time.RFC3339))
		}
	}
	if len(raw) < minTokenBytes || (len(raw)-headerLen-macLen)%aes.BlockSize != 0 {
		return invalid(fmt.Sprintf("token is %d bytes, not a whole number of cipher blocks", len(raw)))
	}
	return nil
}

// openInPlace verifies and decrypts raw token bytes over themselves.
func openInPlace(raw []byte, keys []*Key) ([]byte, error) {
	body := raw[:len(raw)-macLen]
	for _, k := range keys {
		m := newMAC(k)
		m.Write(body)
		if subtle.ConstantTimeCompare(m.Sum(nil), raw[len(body):]) == 1 {
			return decryptBody(body, k)
		}
	}
	return nil, invalid("signature does not match any key (wrong key or altered token)")
}

// DecryptFrom reads a token from r and decrypts it into a single buffer
// about the size of the plaintext: the text is decoded chunk by chunk as it
// is read and signed as it is decoded, then decrypted in place on two cores.
// So a model is held once, not three or four times as with cryptography.
// size, when known (>0), is the token's length and sizes the buffer once.
// The plaintext starts on a 64-byte boundary, so tensors can alias it.
func DecryptFrom(r io.Reader, size int64, ttl time.Duration, keys ...*Key) ([]byte, error) {
	if len(keys) == 0 {
		return nil, errors.New("decrypting: no key given")
	}
	// Decoded byte i lives at out[lead+i]; lead puts the plaintext (which
	// follows the 25-byte header) at offset 64.
	const lead = 64 - headerLen
	capacity := 4 << 10
	if size > 0 {
		capacity = int(size/4*3) + 3
	}
	d := tokenDecoder{out: make([]byte, lead, lead+capacity), lead: lead, macs: make([]hash.Hash, len(keys))}
	for i, k := range keys {
		d.macs[i] = newMAC(k)
	}
	d.start()
	defer d.stop()
	buf := make([]byte, 256<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if derr := d.write(buf[:n]); derr != nil {
				return nil, derr
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	raw, err := d.finish()
	if err != nil {
		return nil, err
	}
	if err := checkToken(raw, ttl, time.Now()); err != nil {
		return nil, err
	}
	body := raw[:len(raw)-macLen]
	d.feed(len(body))
	d.stop()
	for i, m := range d.macs {
		if subtle.ConstantTimeCompare(m.Sum(nil), raw[len(body):]) == 1 {
			return decryptBody(body, keys[i])
		}
	}
	return nil, invalid("signature does not match any key (wrong key or altered token)")
}

// tokenDecoder turns token text into token bytes as it arrives, keeping
// HMACs running over all but the last 32 bytes decoded so far.
type tokenDecoder struct {
	out    []byte
	lead   int
	carry  [4]byte // up to 3 characters waiting for a full quantum
	nc     int
	norm   []byte
	padded bool
	fed    int // decoded bytes already given to the MACs
	macs   []hash.Hash
	read   int // characters read, for error positions
	// The MACs run on another core, fed decoded regions that no longer change.
	work chan []byte
	done chan struct{}
}

func (d *tokenDecoder) start() {
	d.work = make(chan []byte, 16)
	d.done = make(chan struct{})
	go func() {
		for b := range d.work {
			for _, m := range d.macs {
				m.Write(b)
			}
		}
		close(d.done)
	}()
}

// stop waits for the MACs to catch up.
func (d *tokenDecoder) stop() {
	if d.work != nil {
		close(d.work)
		<-d.done
		d.work = nil
	}
}

func (d *tokenDecoder) write(text []byte) error {
	// Fast path: whole quanta of clean URL-safe base64, the common case.
	if d.nc == 0 {
		whole := len(text) / 4 * 4
		if urlSafe(text[whole:]) && d.decode(text[:whole]) == nil {
			d.read += len(text)
			d.nc = copy(d.carry[:], text[whole:])
			return nil
		}
	}
	d.norm = appendNormalized(d.norm[:0], text)
	text = d.norm
	d.read += len(text)
	if len(text) == 0 {
		return nil
	}
	if d.padded {
		return invalid("data after base64 padding")
	}
	if d.nc > 0 {
		k := copy(d.carry[d.nc:], text)
		d.nc += k
		text = text[k:]
		if d.nc < 4 {
			return nil
		}
		if err := d.decode(d.carry[:4]); err != nil {
			return err
		}
		d.nc = 0
	}
	whole := len(text) / 4 * 4
	if err := d.decode(text[:whole]); err != nil {
		return err
	}
	d.nc = copy(d.carry[:], text[whole:])
	return nil
}

// appendNormalized appends src to dst as Python's urlsafe_b64decode reads
// it: whitespace dropped, '+' and '/' taken as '-' and '_'. dst may be
// src[:0], since the writes never overtake the reads.
func appendNormalized(dst, src []byte) []byte {
	for _, c := range src {
		switch c {
		case ' ', '\t', '\n', '\r', '\v', '\f':
			continue
		case '+':
			c = '-'
		case '/':
			c = '_'
		}
		dst = append(dst, c)
	}
	return dst
}

// urlSafe reports whether b holds only URL-safe base64 characters.
func urlSafe(b []byte) bool {
	for _, c := range b {
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '=') {
			return false
		}
	}
	return true
}

func (d *tokenDecoder) decode(q []byte) error {
	if len(q) == 0 {
		return nil
	}
	if d.padded {
		return invalid("data after base64 padding")
	}
	at := len(d.out)
	need := at + len(q)/4*3
	if need > cap(d.out) {
		grown := make([]byte, at, need+need/2)
		copy(grown, d.out)
		d.out = grown
	}
	n, err := base64.URLEncoding.Decode(d.out[at:need], q)
	if err != nil {
		return invalid("not base64")
	}
	d.out = d.out[:at+n]
	if q[len(q)-1] == '=' {
		d.padded = true
	}
	d.feed(len(d.out) - d.lead - macLen)
	return nil
}

// feed gives the MACs the decoded bytes up to n.
func (d *tokenDecoder) feed(n int) {
	if n <= d.fed {
		return
	}
	d.work <- d.out[d.lead+d.fed : d.lead+n]
	d.fed = n
}

func (d *tokenDecoder) finish() ([]byte, error) {
	if d.nc != 0 {
		return nil, invalid("not base64 (length is not a multiple of 4)")
	}
	if len(d.out) == d.lead {
		return nil, invalid("token is empty")
	}
	return d.out[d.lead:], nil
}

// decryptBody decrypts a verified token body in place and strips the
// padding. CBC decryption of each block needs only the previous ciphertext
// block, so the two halves run on two cores.
func decryptBody(body []byte, k *Key) ([]byte, error) {
	block, err := aes.NewCipher(k.encryption())
	if err != nil {
		return nil, err
	}
	ct := body[headerLen:]
	iv := body[9:headerLen]
	blocks := len(ct) / aes.BlockSize
	if blocks >= 1<<16 {
		half := blocks / 2 * aes.BlockSize
		var iv2 [aes.BlockSize]byte
		copy(iv2[:], ct[half-aes.BlockSize:half])
		done := make(chan struct{})
		go func() {
			cipher.NewCBCDecrypter(block, iv2[:]).CryptBlocks(ct[half:], ct[half:])
			close(done)
		}()
		cipher.NewCBCDecrypter(block, iv).CryptBlocks(ct[:half], ct[:half])
		<-done
	} else {
		cipher.NewCBCDecrypter(block, iv).CryptBlocks(ct, ct)
	}
	pad := int(ct[len(ct)-1])
	if pad == 0 || pad > aes.BlockSize {
		return nil, invalid("bad padding")
	}
	for _, c := range ct[len(ct)-pad:] {
		if int(c) != pad {
			return nil, invalid("bad padding")
		}
	}
	return ct[:len(ct)-pad], nil
}

// DecryptFile decrypts the token in the named file into memory. The file
// must be a regular one (see OpenRegular).
func DecryptFile(name string, ttl time.Duration, keys ...*Key) ([]byte, error) {
	f, err := OpenRegular(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return decryptOpen(f, name, maxModelFileBytes, "an encrypted file", ttl, keys...)
}

// decryptOpen decrypts the token in the open regular file f (named name),
// refusing a file of more than max bytes.
func decryptOpen(f *os.File, name string, max int64, what string, ttl time.Duration, keys ...*Key) ([]byte, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() > max {
		return nil, tooLarge(name, st.Size(), max, what)
	}
	r := &capReader{r: f, left: max, err: func() error { return tooLarge(name, -1, max, what) }}
	b, err := DecryptFrom(r, st.Size(), ttl, keys...)
	if err != nil {
		return nil, fmt.Errorf("decrypting %s: %w", name, err)
	}
	return b, nil
}

// rotate re-encrypts token under newest, keeping its timestamp, after
// verifying it with any of keys (newest included), like MultiFernet.rotate.
func rotate(token []byte, newest *Key, keys ...*Key) ([]byte, error) {
	all := append([]*Key{newest}, keys...)
	raw, err := decodeToken(bytes.Clone(token))
	if err != nil {
		return nil, err
	}
	if err := checkToken(raw, NoTTL, time.Now()); err != nil {
		return nil, err
	}
	ts := time.Unix(int64(binary.BigEndian.Uint64(raw[1:9])), 0)
	plain, err := openInPlace(raw, all)
	if err != nil {
		return nil, err
	}
	return fernet.EncryptAndSignAtTime(plain, &newest.k, ts)
}

func newMAC(k *Key) hash.Hash { return hmac.New(sha256.New, k.signing()) }

// Encrypter is the streaming form of Encrypt: what is written to it comes out
// as one Fernet token on the underlying writer. Close must be called to write
// the signature. Encryption (CBC, inherently serial) runs in the caller while
// a second goroutine signs, encodes and writes the previous chunk.
type Encrypter struct {
	out    io.WriteCloser // base64 encoder
	buf    *bufio.Writer  // batches the encoder's 1 KiB writes
	mac    hash.Hash
	cbc    cipher.BlockMode
	cur    []byte
	n      int
	free   chan []byte
	work   chan []byte
	done   chan error
	err    error
	closed bool
}

const encChunk = 256 << 10

// NewEncrypter starts a token under k, timestamped now, on w.
func NewEncrypter(w io.Writer, k *Key) (*Encrypter, error) {
	var iv [aes.BlockSize]byte
	if _, err := io.ReadFull(rand.Reader, iv[:]); err != nil {
		return nil, err
	}
	return newEncrypterAt(w, k, time.Now(), iv[:])
}

func newEncrypterAt(w io.Writer, k *Key, ts time.Time, iv []byte) (*Encrypter, error) {
	block, err := aes.NewCipher(k.encryption())
	if err != nil {
		return nil, err
	}
	bw := bufio.NewWriterSize(w, 512<<10)
	e := &Encrypter{
		buf:  bw,
		out:  base64.NewEncoder(base64.URLEncoding, bw),
		mac:  newMAC(k),
		cbc:  cipher.NewCBCEncrypter(block, iv),
		free: make(chan []byte, 3),
		work: make(chan []byte, 3),
		done: make(chan error, 1),
	}
	for i := 0; i < 3; i++ {
		e.free <- make([]byte, encChunk+aes.BlockSize)
	}
	e.cur = <-e.free
	go e.emitter()
	var hdr [headerLen]byte
	hdr[0] = tokenVersion
	binary.BigEndian.PutUint64(hdr[1:9], uint64(ts.Unix()))
	copy(hdr[9:], iv)
	e.work <- hdr[:]
	return e, nil
}

// emitter signs and writes chunks in order; after an error it drains.
func (e *Encrypter) emitter() {
	var err error
	for b := range e.work {
		if err == nil {
			e.mac.Write(b)
			_, err = e.out.Write(b)
		}
		if cap(b) == encChunk+aes.BlockSize {
			e.free <- b
		}
	}
	e.done <- err
}

// Write encrypts p.
func (e *Encrypter) Write(p []byte) (int, error) {
	if e.closed {
		return 0, errors.New("write to closed Encrypter")
	}
	written := 0
	for len(p) > 0 {
		c := copy(e.cur[e.n:encChunk], p)
		e.n += c
		p = p[c:]
		written += c
		if e.n == encChunk {
			e.cbc.CryptBlocks(e.cur[:encChunk], e.cur[:encChunk])
			e.work <- e.cur[:encChunk]
			b := <-e.free
			e.cur = b[:cap(b)]
			e.n = 0
		}
	}
	return written, nil
}

// Close pads and encrypts the last block, then writes the signature and the
// base64 padding. It does not close the underlying writer.
func (e *Encrypter) Close() error {
	if e.closed {
		return e.err
	}
	e.closed = true
	pad := aes.BlockSize - e.n%aes.BlockSize
	for i := 0; i < pad; i++ {
		e.cur[e.n+i] = byte(pad)
	}
	n := e.n + pad
	e.cbc.CryptBlocks(e.cur[:n], e.cur[:n])
	e.work <- e.cur[:n]
	close(e.work)
	if e.err = <-e.done; e.err != nil {
		return e.err
	}
	if _, e.err = e.out.Write(e.mac.Sum(nil)); e.err != nil {
		return e.err
	}
	if e.err = e.out.Close(); e.err != nil {
		return e.err
	}
	e.err = e.buf.Flush()
	return e.err
}
