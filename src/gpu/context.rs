//! Device and queue set-up: a headless wgpu device on the best adapter there is.

use anyhow::{anyhow, Context, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The device the engine runs on, with what was learned about it at start-up.
#[derive(Clone)]
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    /// Shader modules compiled so far (shared by clones): compiling is the
    /// costly part of a pipeline, which should happen once per kernel.
    modules_compiled: Arc<AtomicUsize>,
    /// What went wrong on the device, said at the next read-back (wgpu's
    /// default is to panic).
    fault: Arc<Mutex<Fault>>,
}

/// Preference among adapter kinds: real GPUs first, a CPU driver (lavapipe) last.
fn rank(kind: wgpu::DeviceType) -> u8 {
    match kind {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

impl Gpu {
    /// Opens the best adapter (honouring `WGPU_BACKEND`), printing a one-line
    /// notice when only a CPU adapter is available.
    pub fn new() -> Result<Self> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        let adapter = adapters
            .into_iter()
            .min_by_key(|a| rank(a.get_info().device_type))
            .ok_or_else(|| {
                anyhow!(
                    "no GPU adapter found (not even a CPU one). Install a Vulkan driver; \
                     on Debian/Ubuntu `apt-get install mesa-vulkan-drivers` provides lavapipe"
                )
            })?;
        let info = adapter.get_info();
        if info.device_type == wgpu::DeviceType::Cpu {
            log::warn!(
                "no GPU found, running on the CPU adapter \"{}\" (correct but slow)",
                info.name
            );
        }
        // The engine binds whole activation buffers, so ask for all the adapter allows.
        let limits = adapter.limits();
        let features =
            adapter.features() & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SUBGROUP);
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("retrain"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .with_context(|| format!("could not open the adapter \"{}\"", info.name))?;
        let fault: Arc<Mutex<Fault>> = Arc::default();
        let errors = fault.clone();
        device.on_uncaptured_error(Arc::new(move |e| {
            let mut f = errors.lock().unwrap_or_else(|e| e.into_inner());
            f.first_error.get_or_insert_with(|| describe(&e));
        }));
        let lost = fault.clone();
        device.set_device_lost_callback(move |reason, message| {
            let mut f = lost.lock().unwrap_or_else(|e| e.into_inner());
            f.lost = Some(format!("the GPU device was lost ({reason:?}) {message}"));
        });
        Ok(Gpu {
            device,
            queue,
            info,
            limits,
            features,
            modules_compiled: Arc::default(),
            fault,
        })
    }

    /// The device's first reported error, as an error to return.
    pub fn check(&self) -> Result<()> {
        let fault = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        // A lost device makes every later call fail too: say the cause.
        match fault.lost.as_ref().or(fault.first_error.as_ref()) {
            Some(what) => Err(anyhow!("{what}")),
            None => Ok(()),
        }
    }

    /// Whether a workgroup of `group` invocations is made of whole subgroups
    /// of at least 8 invocations, which is what the subgroup kernels assume
    /// (invocations 0–7 of every subgroup exist and hand out eight rows).
    /// Vulkan promises whole subgroups only when a pipeline asks for them,
    /// which wgpu does not; drivers fill them when the workgroup size is a
    /// multiple of the subgroup size, and the tests check it on lavapipe.
    pub fn whole_subgroups_of_8(&self, group: u32) -> bool {
        let (min, max) = (self.info.subgroup_min_size, self.info.subgroup_max_size);
        self.features.contains(wgpu::Features::SUBGROUP)
            && min >= 8
            && max >= min
            && group.is_multiple_of(max)
    }

    /// How many shader modules this device has compiled.
    pub fn modules_compiled(&self) -> usize {
        self.modules_compiled.load(Ordering::Relaxed)
    }

    /// Largest storage buffer the engine may bind at once, in bytes.
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// A storage buffer of `bytes` (at least 4) that kernels read and write.
    pub fn storage_buffer(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    }

    /// A storage buffer holding `data`, padded to a multiple of four bytes.
    pub fn storage_buffer_with(&self, label: &str, data: &[u8]) -> wgpu::Buffer {
        let buffer = self.storage_buffer(label, data.len() as u64);
        self.write_padded(&buffer, 0, data);
        buffer
    }

    /// A bind group layout of buffers, binding i of type `kinds[i]`, for compute shaders.
    pub fn buffer_layout(
        &self,
        label: &str,
        kinds: &[wgpu::BufferBindingType],
    ) -> wgpu::BindGroupLayout {
        let entries: Vec<wgpu::BindGroupLayoutEntry> = kinds
            .iter()
            .enumerate()
            .map(|(i, &ty)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        self.device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(label),
                entries: &entries,
            })
    }

    /// A WGSL module of this project's shaders, compiled with bounds checks
    /// but without the loop counters wgpu otherwise adds to every loop: they
    /// keep drivers from unrolling the kernels' fixed-size tile loops (2.5×
    /// slower convs on lavapipe).
    pub fn shader_module(&self, label: &str, source: &str) -> wgpu::ShaderModule {
        let checks = wgpu::ShaderRuntimeChecks {
            force_loop_bounding: false,
            ..wgpu::ShaderRuntimeChecks::checked()
        };
        let descriptor = wgpu::ShaderModuleDescriptor {
            label: Some(label),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        };
        self.modules_compiled.fetch_add(1, Ordering::Relaxed);
        // SAFETY: loop bounding only guards against infinite loops; every loop
        // in shaders/ is a counted `for` over a bound from its parameters.
        unsafe { self.device.create_shader_module_trusted(descriptor, checks) }
    }

    /// One compute pipeline per entry point of `source`, all sharing `layout`.
    pub fn pipelines<const N: usize>(
        &self,
        label: &str,
        source: &str,
        layout: &wgpu::BindGroupLayout,
        entry_points: [&str; N],
    ) -> [wgpu::ComputePipeline; N] {
        let pipeline_layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(label),
                bind_group_layouts: &[Some(layout)],
                immediate_size: 0,
            });
        let module = self.shader_module(label, source);
        entry_points.map(|entry| {
            self.device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: Some(&pipeline_layout),
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: Default::default(),
                    cache: None,
                })
        })
    }

    /// A bind group with `buffers[i]` at binding i.
    pub fn bind_buffers(
        &self,
        label: &str,
        layout: &wgpu::BindGroupLayout,
        buffers: &[&wgpu::Buffer],
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout,
            entries: &entries,
        })
    }

    /// A uniform buffer holding one parameter block.
    pub fn uniform_buffer<T: bytemuck::Pod>(&self, label: &str, value: &T) -> wgpu::Buffer {
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: std::mem::size_of::<T>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue
            .write_buffer(&buffer, 0, bytemuck::bytes_of(value));
        buffer
    }

    /// Writes bytes at `offset`, padding the tail to the 4-byte multiple wgpu requires.
    pub fn write_padded(&self, buffer: &wgpu::Buffer, offset: u64, data: &[u8]) {
        let whole = data.len() / 4 * 4;
        if whole > 0 {
            self.queue.write_buffer(buffer, offset, &data[..whole]);
        }
        if whole < data.len() {
            let mut tail = [0u8; 4];
            tail[..data.len() - whole].copy_from_slice(&data[whole..]);
            self.queue
                .write_buffer(buffer, offset + whole as u64, &tail);
        }
    }

    /// Copies `bytes` bytes from the start of `buffer` back to the CPU (blocking).
    pub fn read_buffer(&self, buffer: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        self.read_range(buffer, 0, bytes)
    }

    /// `bytes` bytes of `buffer` from `offset` (both multiples of 4), copied back to the host.
    pub fn read_range(&self, buffer: &wgpu::Buffer, offset: u64, bytes: u64) -> Result<Vec<u8>> {
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, bytes);
        self.queue.submit([encoder.finish()]);
        self.map_and_read(&staging)
    }

    /// Maps a MAP_READ buffer whose copy has been submitted and returns its contents.
    pub fn map_and_read(&self, staging: &wgpu::Buffer) -> Result<Vec<u8>> {
        let (sender, receiver) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = sender.send(r);
        });
        let polled = self.device.poll(wgpu::PollType::wait_indefinitely());
        self.check()?;
        polled.context("the GPU stopped responding")?;
        receiver
            .recv()
            .context("the GPU dropped a read-back")?
            .context("could not read results back from the GPU")?;
        let data = staging
            .get_mapped_range(..)
            .context("could not read results back from the GPU")?
            .to_vec();
        staging.unmap();
        Ok(data)
    }
}

/// What the device reported going wrong.
#[derive(Default)]
struct Fault {
    first_error: Option<String>,
    lost: Option<String>,
}

/// A wgpu error in the user's terms.
fn describe(e: &wgpu::Error) -> String {
    match e {
        wgpu::Error::OutOfMemory { .. } => {
            "the GPU ran out of memory (try a smaller --train-batch-size or --input-size)".into()
        }
        wgpu::Error::Validation { description, .. } => {
            format!("the GPU refused a request (a batch or input size beyond what this device allows?): {description}")
        }
        other => format!("the GPU reported an error: {other}"),
    }
}
