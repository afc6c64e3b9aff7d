package fcsim

import "github.com/nexus-microvm/nexus/internal/firecracker/model"

// The balloon device: configuration before boot, target and statistics
// after. The simulated guest gives back exactly what is asked and
// acknowledges a free page hinting run at once.

// Free page hinting commands (virtio-balloon): 0 stop, 1 done, then ids.
const (
	hintCmdStop = 0
	hintCmdDone = 1
)

func (s *sim) putBalloon(b model.Balloon) *vmmError {
	if e := s.pre(); e != nil {
		return e
	}
	s.bootPath = true
	if b.AmountMib > s.res.machine.MemSizeMib {
		return fault("Balloon config error: Amount of pages requested is too large.")
	}
	if b.StatsPollingIntervalS == nil {
		b.StatsPollingIntervalS = model.Int(0)
	}
	s.res.balloon = &balloonDev{cfg: b, hostCmd: hintCmdStop}
	return nil
}

const errNoBalloonAfterBoot = "Failed perform action on device: Device not found"

func (s *sim) getBalloon() (any, *vmmError) {
	if s.res.balloon == nil {
		if s.started() {
			return nil, fault("Internal VMM error: " + errNoBalloonAfterBoot)
		}
		return nil, fault("Balloon config error: No balloon device found.")
	}
	return s.res.balloon.out(), nil
}

func (s *sim) balloonPost() (*balloonDev, *vmmError) {
	if e := s.post(); e != nil {
		return nil, e
	}
	if s.res.balloon == nil {
		return nil, fault("Balloon update error: " + errNoBalloonAfterBoot)
	}
	return s.res.balloon, nil
}

func (s *sim) patchBalloon(u model.BalloonUpdate) *vmmError {
	b, e := s.balloonPost()
	if e != nil {
		return e
	}
	if u.AmountMib > s.res.machine.MemSizeMib {
		// BalloonError::TooMuchMemoryRequested names the requested size.
		return fault("Balloon update error: Balloon: Requested memory should be less than %dMiB", u.AmountMib)
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
		return nil, fault("Balloon update error: Balloon: Received stats query when stats are disabled.")
	}
	const pagesPerMib = 256
	total := uint64(s.res.machine.MemSizeMib) << 20
	free := total - uint64(b.cfg.AmountMib)<<20
	pages := b.cfg.AmountMib * pagesPerMib
	return object{{"target_pages", pages}, {"actual_pages", pages}, {"target_mib", b.cfg.AmountMib},
		{"actual_mib", b.cfg.AmountMib}, {"swap_in", 0}, {"swap_out", 0}, {"major_faults", 0}, {"minor_faults", 0},
		{"free_memory", free}, {"total_memory", total}, {"available_memory", free}, {"disk_caches", 0}}, nil
}

func (s *sim) patchBalloonStats(u model.BalloonStatsUpdate) *vmmError {
	b, e := s.balloonPost()
	if e != nil {
		return e
	}
	cur := *b.cfg.StatsPollingIntervalS
	if cur == u.StatsPollingIntervalS {
		return nil
	}
	if cur == 0 || u.StatsPollingIntervalS == 0 {
		return fault("Balloon update error: Balloon: Statistics cannot be enabled/disabled after activation.")
	}
	b.cfg.StatsPollingIntervalS = model.Int(u.StatsPollingIntervalS)
	s.met.inc("balloon.stats_updates_count")
	return nil
}

func (s *sim) hintingDevice() (*balloonDev, *vmmError) {
	b, e := s.balloonPost()
	if e != nil {
		return nil, e
	}
	if !isTrue(b.cfg.FreePageHinting) {
		return nil, fault("Balloon update error: Balloon: Attempting to use hinting when not enabled")
	}
	return b, nil
}

func (s *sim) startHinting(model.BalloonStartCmd) *vmmError {
	b, e := s.hintingDevice()
	if e != nil {
		return e
	}
	id := b.lastCmd + 1
	if id <= hintCmdDone {
		id = 2 // 0 and 1 are reserved
	}
	b.lastCmd, b.hostCmd, b.guestCmd = id, id, &id
	s.met.inc("balloon.free_page_hint_count")
	return nil
}

func (s *sim) getHintingStatus() (any, *vmmError) {
	b, e := s.hintingDevice()
	if e != nil {
		return nil, e
	}
	var guest any
	if b.guestCmd != nil {
		guest = *b.guestCmd
	}
	return object{{"host_cmd", b.hostCmd}, {"guest_cmd", guest}}, nil
}

func (s *sim) stopHinting() *vmmError {
	b, e := s.hintingDevice()
	if e != nil {
		return e
	}
	b.hostCmd = hintCmdDone
	return nil
}
