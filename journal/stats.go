package journal

// Stats returns a snapshot of the counters. Safe for concurrent use; cost
// O(segments) under j.mu.
func (j *Journal) Stats() Stats {
	var st Stats
	j.mu.Lock()
	for _, s := range j.table.Load().segs {
		if s == nil {
			continue
		}
		st.Segments++
		st.DiskBytes += s.written
		st.Live += s.live
		st.LiveBytes += s.liveBytes()
	}
	st.LastRecovery = j.lastReport
	j.readOnlyStatsLocked(&st)
	j.mu.Unlock()
	st.Appends = j.stats.appends.Load()
	st.DoneRecords = j.stats.doneRecs.Load()
	st.Groups = j.stats.groups.Load()
	st.Fsyncs = j.stats.fsyncs.Load()
	st.WriteErrors = j.stats.writeErrs.Load()
	st.Corrupt = j.stats.corrupt.Load()
	st.Deleted = j.stats.deleted.Load()
	st.Recycled = j.stats.recycled.Load()
	st.SpareFiles = int(j.poolFiles.Load())
	st.SpareBytes = j.poolBytes.Load()
	return st
}
