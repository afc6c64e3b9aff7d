package fcsim

import "github.com/nexus-microvm/nexus/internal/firecracker"

// The balloon device: configuration before boot, target and statistics
// after. The simulated guest gives back exactly what is asked.

func (s *sim) putBalloon(b firecracker.Balloon) *vmmError {
	if e := s.pre(); e != nil {
		return e
	}
	s.bootPath = true
	if b.AmountMib > s.res.machine.MemSizeMib {
		return fault("Balloon config error: Amount of pages requested is too large.")
	}
	if b.StatsPollingIntervalS == nil {
		b.StatsPollingIntervalS = firecracker.Int(0)
	}
	s.res.balloon = &balloonDev{cfg: b}
	return nil
}

func (s *sim) getBalloon() (any, *vmmError) {
	if s.res.balloon == nil {
		if s.started() {
			return nil, fault("Internal VMM error: Balloon: No balloon device found.")
		}
		return nil, fault("Balloon config error: No balloon device found.")
	}
	return s.res.balloon.cfg, nil
}

func (s *sim) balloonPost() (*balloonDev, *vmmError) {
	if e := s.post(); e != nil {
		return nil, e
	}
	if s.res.balloon == nil {
		return nil, fault("Balloon update error: No balloon device found.")
	}
	return s.res.balloon, nil
}

func (s *sim) patchBalloon(u firecracker.BalloonUpdate) *vmmError {
	b, e := s.balloonPost()
	if e != nil {
		return e
	}
	if u.AmountMib > s.res.machine.MemSizeMib {
		return fault("Balloon update error: Amount of pages requested is too large.")
	}
	if u.AmountMib > b.cfg.AmountMib {
		s.met.inc("balloon.inflate_count")
	} else if u.AmountMib < b.cfg.AmountMib {
		s.met.inc("balloon.deflate_count")
	}
	b.cfg.AmountMib = u.AmountMib
	return nil
}

func (s *sim) getBalloonStats() (any, *vmmError) {
	b, e := s.balloonPost()
	if e != nil {
		return nil, e
	}
	if *b.cfg.StatsPollingIntervalS == 0 {
		return nil, fault("Balloon update error: Statistics for the balloon device are not enabled")
	}
	const pagesPerMib = 256
	total := int64(s.res.machine.MemSizeMib) << 20
	free := total - int64(b.cfg.AmountMib)<<20
	zero := int64(0)
	return firecracker.BalloonStats{
		TargetPages: b.cfg.AmountMib * pagesPerMib, ActualPages: b.cfg.AmountMib * pagesPerMib,
		TargetMib: b.cfg.AmountMib, ActualMib: b.cfg.AmountMib,
		SwapIn: &zero, SwapOut: &zero, MajorFaults: &zero, MinorFaults: &zero,
		FreeMemory: &free, TotalMemory: &total, AvailableMemory: &free, DiskCaches: &zero,
	}, nil
}

func (s *sim) patchBalloonStats(u firecracker.BalloonStatsUpdate) *vmmError {
	b, e := s.balloonPost()
	if e != nil {
		return e
	}
	if (*b.cfg.StatsPollingIntervalS == 0) != (u.StatsPollingIntervalS == 0) {
		return fault("Balloon update error: Cannot enable/disable the statistics after boot.")
	}
	b.cfg.StatsPollingIntervalS = firecracker.Int(u.StatsPollingIntervalS)
	s.met.inc("balloon.stats_updates_count")
	return nil
}

func (s *sim) hintingDevice() (*balloonDev, *vmmError) {
	b, e := s.balloonPost()
	if e != nil {
		return nil, e
	}
	if b.cfg.FreePageHinting == nil || !*b.cfg.FreePageHinting {
		return nil, fault("Balloon update error: Free page hinting is not enabled on the balloon device")
	}
	return b, nil
}

func (s *sim) startHinting(firecracker.BalloonStartCmd) *vmmError {
	b, e := s.hintingDevice()
	if e != nil {
		return e
	}
	b.hintCmd++
	s.met.inc("balloon.free_page_hint_count")
	return nil
}

func (s *sim) getHintingStatus() (any, *vmmError) {
	b, e := s.hintingDevice()
	if e != nil {
		return nil, e
	}
	st := firecracker.BalloonHintingStatus{HostCmd: b.hintCmd}
	if b.hintCmd > 0 {
		// The simulated guest acknowledges a run at once.
		st.GuestCmd = firecracker.Int(b.hintCmd)
	}
	return st, nil
}

// stopHinting ends a hinting run; the simulated guest has nothing to stop,
// so only the device checks remain.
func (s *sim) stopHinting() *vmmError {
	_, e := s.hintingDevice()
	return e
}
