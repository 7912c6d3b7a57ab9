//! The XDP program loaded without pins or attachment, for
//! `BPF_PROG_TEST_RUN`: unit tests, the differential test and benchmarks.

use std::time::Duration;

use aya::{
    maps::{MapData, MapError, MapInfo, PerCpuArray},
    programs::{ProgramError, TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use shield_common::{map_names, Counter, CpuCounters, Reason, Verdict, PROGRAM_NAME};

use super::{Counters, DataplaneError, SharedMaps, PROGRAM_OBJECT};

pub struct TestProgram {
    ebpf: Ebpf,
    /// The program's name in the object.
    name: String,
    maps: SharedMaps,
    /// `None` for another build's object whose counter value has another
    /// layout (benchmarks time such builds side by side, never count them).
    counters: Option<PerCpuArray<MapData, CpuCounters>>,
}

/// One test run: the XDP action and the kernel's timing.
#[derive(Debug, Clone, Copy)]
pub struct RunResult {
    pub action: u32,
    /// Mean time per repetition as the kernel measured it.
    pub per_run: Duration,
}

/// Where a test-run program is "attached", for error messages.
const TEST_RUN: &str = "(test run)";

fn run_error(source: ProgramError) -> DataplaneError {
    DataplaneError::Load {
        interface: TEST_RUN.into(),
        source,
    }
}

impl TestProgram {
    /// Loads the program with private, unpinned maps.
    pub fn load() -> Result<TestProgram, DataplaneError> {
        TestProgram::load_object(PROGRAM_OBJECT, PROGRAM_NAME)
    }

    /// Loads `program` from another object with the same map names
    /// (benchmarks use this for their anchors).
    pub fn load_object(object: &[u8], program: &str) -> Result<TestProgram, DataplaneError> {
        let mut ebpf = EbpfLoader::new()
            .load(object)
            .map_err(DataplaneError::Object)?;
        super::xdp_program(&mut ebpf, program, TEST_RUN)?
            .load()
            .map_err(run_error)?;
        let maps = SharedMaps::take_from(&mut ebpf)?;
        let counters =
            ebpf.take_map(map_names::COUNTERS)
                .ok_or_else(|| DataplaneError::MissingMap {
                    name: map_names::COUNTERS.into(),
                })?;
        let counters = match PerCpuArray::try_from(counters) {
            Ok(counters) => Some(counters),
            Err(MapError::InvalidValueSize { .. }) => None,
            Err(source) => {
                return Err(DataplaneError::Map {
                    context: "COUNTERS".into(),
                    source,
                })
            }
        };
        Ok(TestProgram {
            ebpf,
            name: program.to_owned(),
            maps,
            counters,
        })
    }

    pub fn maps(&mut self) -> &mut SharedMaps {
        &mut self.maps
    }

    /// The ids of the maps this program uses.
    fn map_ids(&self) -> Result<Vec<u32>, DataplaneError> {
        Ok(self
            .program()?
            .info()
            .and_then(|info| info.map_ids())
            .map_err(run_error)?
            .unwrap_or_default())
    }

    /// A second handle on this program's shared maps (the same kernel
    /// objects, found through the program's map ids), so a test can write
    /// them from one thread while another test-runs packets.
    pub fn shared_maps_handle(&self) -> Result<SharedMaps, DataplaneError> {
        let map_error = |source| DataplaneError::Map {
            context: "cannot open the test program's maps by id".into(),
            source,
        };
        let ids = self.map_ids()?;
        let mut by_name = std::collections::BTreeMap::new();
        for id in ids {
            let data = MapData::from_id(id).map_err(map_error)?;
            let name = data
                .info()
                .map_err(map_error)?
                .name_as_str()
                .unwrap_or_default()
                .to_owned();
            by_name.insert(name, data);
        }
        SharedMaps::from_maps(|name| {
            by_name
                .remove(name)
                .map(|data| super::maps::typed(name, data))
                .ok_or_else(|| DataplaneError::MissingMap { name: name.into() })
        })
    }

    /// The kernel's description of each of this program's maps, by name,
    /// so a test can hold the object to the table of map layouts.
    pub fn map_infos(&self) -> Result<Vec<(String, MapInfo)>, DataplaneError> {
        let ids = self.map_ids()?;
        let mut infos = Vec::new();
        for id in ids {
            let info = MapInfo::from_id(id).map_err(|source| DataplaneError::Map {
                context: format!("cannot inspect map {id}"),
                source,
            })?;
            infos.push((info.name_as_str().unwrap_or_default().to_owned(), info));
        }
        Ok(infos)
    }

    /// How many instructions the verifier went through to accept the
    /// program (its limit is 1,000,000): the headroom left for new paths.
    pub fn verified_instructions(&self) -> Result<u32, DataplaneError> {
        let info = self.program()?.info().map_err(run_error)?;
        Ok(info.verified_instruction_count().unwrap_or(0))
    }

    fn program(&self) -> Result<&Xdp, DataplaneError> {
        self.ebpf
            .program(&self.name)
            .ok_or_else(|| DataplaneError::MissingProgram {
                name: self.name.clone(),
            })?
            .try_into()
            .map_err(run_error)
    }

    /// Runs the program `repeat` times on `frame` (at least 14 bytes: the
    /// kernel refuses shorter test input).
    pub fn run_repeat(&self, frame: &[u8], repeat: u32) -> Result<RunResult, DataplaneError> {
        let options = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        };
        let result = self.program()?.test_run(options).map_err(run_error)?;
        Ok(RunResult {
            action: result.return_value,
            per_run: result.duration,
        })
    }

    /// Runs the program once on `frame`; returns the action and the frame
    /// as the program left it (an answer, for `XDP_TX`).
    pub fn run_output(&self, frame: &[u8]) -> Result<(u32, Vec<u8>), DataplaneError> {
        // Room for a frame the program grew; the kernel says what it wrote.
        let mut out = vec![0u8; frame.len() + 256];
        let options = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        };
        let result = self.program()?.test_run(options).map_err(run_error)?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    pub fn run(&self, frame: &[u8]) -> Result<u32, DataplaneError> {
        self.run_repeat(frame, 1).map(|r| r.action)
    }

    pub fn counters(&self) -> Result<Counters, DataplaneError> {
        let counters = self
            .counters
            .as_ref()
            .ok_or_else(|| DataplaneError::MissingMap {
                name: format!("{} of this build's layout", map_names::COUNTERS),
            })?;
        Counters::read(counters)
    }

    /// One slot, summed over CPUs.
    pub fn counter(&self, verdict: Verdict, reason: Reason) -> Result<Counter, DataplaneError> {
        Ok(self.counters()?.get(verdict, reason))
    }
}
