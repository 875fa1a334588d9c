package sqlstore

// SetCompactStep sets the revisions one compaction transaction forgets, for a test.
func SetCompactStep(n int64) (restore func()) {
	old := compactStep
	compactStep = n
	return func() { compactStep = old }
}
