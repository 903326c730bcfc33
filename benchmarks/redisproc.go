package benchmarks

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrNoRedis reports that redis-server is not on PATH.
var ErrNoRedis = errors.New("redis-server not found on PATH (benchmarks/install-redis.sh installs it)")

// RedisServer is a redis-server process this suite started on 127.0.0.1
// with its own port and directory. Its methods are not safe for concurrent
// use.
type RedisServer struct {
	Addr string
	Dir  string
	// AppendOnly turns on the AOF with appendfsync everysec, redis's
	// documented durable setting; otherwise persistence is off
	// (--save "" --appendonly no).
	AppendOnly bool

	cmd *exec.Cmd
}

// StartRedis starts a redis-server in dir on a free loopback port.
func StartRedis(dir string, appendOnly bool) (*RedisServer, error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, ErrNoRedis
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	r := &RedisServer{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Dir: dir, AppendOnly: appendOnly}
	return r, r.start()
}

func (r *RedisServer) start() error {
	_, port, _ := net.SplitHostPort(r.Addr)
	args := []string{
		"--bind", "127.0.0.1", "--port", port, "--dir", r.Dir,
		"--save", "", "--daemonize", "no", "--protected-mode", "yes",
		"--logfile", "redis.log",
	}
	if r.AppendOnly {
		args = append(args, "--appendonly", "yes", "--appendfsync", "everysec")
	} else {
		args = append(args, "--appendonly", "no")
	}
	r.cmd = exec.Command("redis-server", args...)
	if err := r.cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	trackChild(r.cmd.Process)
	c := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			// A restarted AOF server answers LOADING until it has replayed.
			return nil
		}
		if time.Now().After(deadline) {
			r.Kill()
			return fmt.Errorf("redis-server on %s did not answer: %w", r.Addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// PID is the running server's process id.
func (r *RedisServer) PID() int { return r.cmd.Process.Pid }

// Kill sends SIGKILL and waits for the process to exit.
func (r *RedisServer) Kill() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGKILL)
	_ = r.cmd.Wait()
	untrackChild(r.cmd.Process)
}

// Restart starts the server again on the same port and directory, which
// replays the AOF when AppendOnly is set.
func (r *RedisServer) Restart() error { return r.start() }

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// tempDir makes a directory under parent (or the system temp dir).
func tempDir(parent, pattern string) (string, error) {
	return os.MkdirTemp(parent, pattern)
}
