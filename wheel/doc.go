// Package wheel is a hierarchical, tickless timing wheel for millions of
// pending entries. See Wheel.
package wheel
