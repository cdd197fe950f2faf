package main

import (
	_ "github.com/go-zeromq/zmq4"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/quic-go/quic-go"
	_ "github.com/urfave/cli/v2"
	_ "github.com/xtaci/smux"
	_ "go.uber.org/goleak"
	_ "gopkg.in/yaml.v3"
)

func main() {}
