// Command deferd is a delayed-message scheduler in front of nsqd.
package main

import "fmt"

// Version is deferd's version, reported by --version and /info.
const Version = "0.1.0"

func main() { fmt.Println("deferd", Version) }
