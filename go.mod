module github.com/flarego/flarego

go 1.26

require github.com/fernet/fernet-go v0.0.0-20240119011108-303da6aec611

require github.com/nlpodyssey/gopickle v0.2.0 // indirect
