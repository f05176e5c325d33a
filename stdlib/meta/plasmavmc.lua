---@meta plasmavmc
-- Type stubs for the Lua language server (LuaLS): what plasmavmc gives a plan (`vm`, `sleep`)
-- and the plasma.test module. Never run: add this folder to "workspace.library" (and stdlib/
-- too, so `require "plasma.test"` resolves to the real module, which uses these types).

---------------------------------------------------------------------------------------------
-- vm

---@alias plasmavmc.State
---| "created" # QEMU is up, paused before the first instruction
---| "running"
---| "paused"
---| "stopped" # stopped or killed by plasmavmc, or the guest powered off
---| "crashed" # QEMU died without shutting down, or the guest panicked

---@alias plasmavmc.Accel "auto"|"kvm"|"tcg"

---@alias plasmavmc.ReasonCode
---| "guest-shutdown" # the guest powered itself off
---| "stop" # plasmavmc stop (the message names the step)
---| "host-quit" # a QMP quit from outside plasmavmc
---| "host-signal" # SIGTERM/SIGINT/SIGHUP from outside plasmavmc
---| "killed" # SIGKILL: plasmavmc kill, or from outside
---| "qemu-crashed" # QEMU died of a fault signal or exited non-zero
---| "guest-panicked"
---| "launch-failed"
---| "supervisor-lost" # the VM's supervisor is gone; QEMU is acted on by pid
---| "created"
---| "running"
---| "paused"

---@class plasmavmc.Event
---@field time string ISO 8601, UTC, milliseconds
---@field unix_nanos integer
---@field kind string create, launch, greeting, resume, stop, powerdown, shutdown, reset, guest-panicked, stop-requested, stop-step, kill-requested, exit…
---@field state plasmavmc.State the VM's state right after the event
---@field reason_code? plasmavmc.ReasonCode on exit
---@field message? string on exit

---@class plasmavmc.CreateSpec
---@field name string VM name, unique in the runtime directory
---@field kernel? string kernel image to boot; without one the VM boots from its first disk
---@field initrd? string initial ramdisk
---@field append? string kernel command line (one line); `console=ttyS0` added unless given
---@field memory? string|integer size like "256M" or "1G" (default "256M")
---@field cpus? integer virtual CPUs (default 1)
---@field disks? string[] disk image paths (qcow2 or raw), on virtio
---@field net? string|string[] networks like "user" or "user,hostfwd=tcp:127.0.0.1:8080-:80"
---@field accel? plasmavmc.Accel default auto: KVM only where it really works, else TCG
---@field ephemeral? boolean delete the VM when the plan ends (default false)

---@class plasmavmc.StopOptions
---@field timeout? number seconds for the whole stop, forced steps included (default 30; finite)

---@class plasmavmc.DeleteOptions
---@field force? boolean kill a VM whose QEMU is up instead of refusing (default false)

---@class plasmavmc.WaitOptions
---@field timeout? number seconds (default 60; math.huge: no limit)

---@class plasmavmc.ConsoleWaitOptions
---@field timeout? number seconds (default 60; math.huge: no limit)
---@field fail? string[] Lua patterns: a console line matching one raises at once
---@field since? integer console byte offset (from an earlier wait): older lines do not count

---@class plasmavmc.ExecOptions
---@field timeout? number seconds (default 60; math.huge: no limit)

---@class plasmavmc.Info
---@field name string
---@field id string
---@field host string the address of the VM's host ("local" for this machine)
---@field state plasmavmc.State
---@field reason_code plasmavmc.ReasonCode why, machine-readable
---@field reason string why the VM is in that state (e.g. how it stopped)
---@field pid? integer QEMU's process id while it runs
---@field accel string the accelerator in use ("kvm" or "tcg")
---@field spec table the VM's spec, as stored

--- A handle on one VM. Methods may be called as `v:start()` or `vm.start(v)` (or
--- `vm.start("name")`). Failures raise errors naming the VM.
---@class plasmavmc.VM
---@field name string
---@field id string
local VM = {}

--- Boot the VM (created, stopped or crashed → running).
---@return plasmavmc.VM self
function VM:start() end

--- The VM's state, derived from its live QEMU process, and why.
---@return plasmavmc.State state
---@return plasmavmc.ReasonCode code
---@return string reason
function VM:status() end

--- The VM's event log, oldest first (README: "Events").
---@return plasmavmc.Event[]
function VM:events() end

--- Stop: ACPI powerdown (repeated), then QMP quit, SIGTERM, SIGKILL, all within the timeout.
---@param opts? plasmavmc.StopOptions
---@return string step the step that stopped the VM
function VM:stop(opts) end

--- Kill QEMU at once.
function VM:kill() end

--- Pause the guest's CPUs.
function VM:pause() end

--- Resume a paused VM.
function VM:resume() end

--- Delete the VM and its folder. Refuses a VM whose QEMU is up unless `force`.
---@param opts? plasmavmc.DeleteOptions
function VM:delete(opts) end

---@return plasmavmc.Info
function VM:info() end

--- Wait until the VM is in `state`; raises on timeout.
---@param state plasmavmc.State
---@param opts? plasmavmc.WaitOptions
---@return boolean
function VM:wait_for(state, opts) end

--- Wait for a console line matching the Lua pattern; lines logged before the call count too
--- (unless opts.since). Raises on timeout, showing the last console lines.
---@param pattern string
---@param opts? plasmavmc.ConsoleWaitOptions
---@return string line the matching line
---@return integer offset byte offset just past the line, for opts.since
function VM:wait_for_console(pattern, opts) end

--- Type text on the serial console (include "\n" to end a line).
---@param text string
function VM:send_console(text) end

--- The whole serial console log so far.
---@return string
function VM:console_log() end

--- Run a shell command on the guest's serial console shell.
---@param cmd string
---@param opts? plasmavmc.ExecOptions
---@return integer code exit status
---@return string output what the command printed
function VM:exec(cmd, opts) end

--- Send a QMP command and return its result.
---@param command string e.g. "query-status"
---@param args? table the command's arguments
---@return table
function VM:qmp(command, args) end

-- A VM object or a VM name.
---@alias plasmavmc.Target plasmavmc.VM|string

--- The plasmavmc API given to plans: VMs on the session's own host (this machine, or the host
--- given with --host / PLASMAVMC_HOST). `vm.connect` gives the same API on other hosts.
---@class plasmavmc.API
vm = {}

--- Create a VM (state "created": QEMU up, paused before boot).
---@param spec plasmavmc.CreateSpec
---@return plasmavmc.VM
function vm.create(spec) end

---@param v plasmavmc.Target
---@return plasmavmc.VM
function vm.start(v) end

---@param v plasmavmc.Target
---@return plasmavmc.State state
---@return plasmavmc.ReasonCode code
---@return string reason
function vm.status(v) end

---@param v plasmavmc.Target
---@return plasmavmc.Event[]
function vm.events(v) end

---@param v plasmavmc.Target
---@param opts? plasmavmc.StopOptions
---@return string step
function vm.stop(v, opts) end

---@param v plasmavmc.Target
function vm.kill(v) end

---@param v plasmavmc.Target
function vm.pause(v) end

---@param v plasmavmc.Target
function vm.resume(v) end

---@param v plasmavmc.Target
---@param opts? plasmavmc.DeleteOptions
function vm.delete(v, opts) end

---@param v plasmavmc.Target
---@return plasmavmc.Info
function vm.info(v) end

---@param v plasmavmc.Target
---@param state plasmavmc.State
---@param opts? plasmavmc.WaitOptions
---@return boolean
function vm.wait_for(v, state, opts) end

---@param v plasmavmc.Target
---@param pattern string
---@param opts? plasmavmc.ConsoleWaitOptions
---@return string line
---@return integer offset
function vm.wait_for_console(v, pattern, opts) end

---@param v plasmavmc.Target
---@param text string
function vm.send_console(v, text) end

---@param v plasmavmc.Target
---@return string
function vm.console_log(v) end

---@param v plasmavmc.Target
---@param cmd string
---@param opts? plasmavmc.ExecOptions
---@return integer code
---@return string output
function vm.exec(v, cmd, opts) end

---@param v plasmavmc.Target
---@param command string
---@param args? table
---@return table
function vm.qmp(v, command, args) end

--- Every VM in the runtime directory.
---@return plasmavmc.VM[]
function vm.list() end

--- The VM called `name`, or nil and a message.
---@param name string
---@return plasmavmc.VM|nil
---@return string? message
function vm.get(name) end

--- Run the functions concurrently; returns their results in argument order once all are done.
--- An error in one is raised here.
---@param ... fun(): any
---@return any ...
function vm.parallel(...) end

--- Pause the plan (other vm.parallel branches go on running).
---@param seconds number
function sleep(seconds) end

---@class plasmavmc.ConnectOptions
---@field ca? string PEM file of the CA that signed the server's certificate (TLS)
---@field cert? string PEM file of this client's certificate, for mutual TLS (needs key)
---@field key? string PEM file of that certificate's private key (needs cert)
---@field server_name? string the name the server's certificate must carry (default: the address's host)

--- A handle on the VMs of another host, from `vm.connect`: every function of `vm`
--- (`h.create{…}`, `h.get`, `h.list`, `h.start(v)`…) going to that host. VM objects it returns
--- are bound to it: all their methods go there.
---@class plasmavmc.Host : plasmavmc.API
---@field address string the address it was connected to
local Host = {}

--- Close the connection: later calls through the handle or its VMs raise. The host's
--- ephemeral VMs are removed first. Also done by `local h <close> = vm.connect(…)` and when
--- the plan ends.
function Host:close() end

--- Connect to a plasmavmc service (`plasmavmc serve`): "unix:PATH" or "tcp:HOST:PORT"
--- (`tcp:[::1]:PORT` for IPv6). Connecting to the same address again returns the same handle.
---@param address string
---@param opts? plasmavmc.ConnectOptions
---@return plasmavmc.Host
function vm.connect(address, opts) end

---------------------------------------------------------------------------------------------
-- plasma.test (require "plasma.test")

---@class plasma.test.CaseOptions
---@field timeout? number seconds; checked while Lua code runs (a vm call ends by its own timeout)
---@field skip? string|boolean skip the case: the reason (true: none given; false: run it)

---@class plasma.test.RunOptions
---@field filter? string Lua pattern: only matching case names run (default $PLASMAVMC_TEST_FILTER)
---@field junit? string write a JUnit XML report there (default $PLASMAVMC_JUNIT)
---@field artifacts? string console logs of failed cases go here (default $PLASMAVMC_TEST_ARTIFACTS)

--- The assertion object passed to each case. A failed assertion ends the case; its message
--- starts with the file:line of the assertion.
---@class plasma.test.T
---@field name string the case's name as reported
local T = {}

--- Deep equality (tables by contents); the failure shows `expected:` and `got:`.
---@param got any
---@param expected any
---@param msg? string
function T:eq(got, expected, msg) end

--- Fails unless value is neither nil nor false; returns value.
---@generic V
---@param value V
---@param message? any shown on failure (so `t:ok(vm.get(name))` shows get's message)
---@return V
function T:ok(value, message) end

--- Fails unless text matches the Lua pattern; returns the captures (or the whole match).
---@param text any
---@param pattern string
---@param msg? string
---@return string ...
function T:match(text, pattern, msg) end

--- Fails unless fn raises an error (whose message matches pattern, if given); returns the error.
---@param fn fun(): any
---@param pattern? string
---@return any err
function T:raises(fn, pattern) end

--- Fails the case now.
---@param msg? string
function T:fail(msg) end

--- Ends the case now as skipped.
---@param reason? string
function T:skip(reason) end

--- Prints a diagnostic line (`# ...`); tables are rendered, not shown as addresses.
---@param ... any
function T:log(...) end

---@class plasma.test
local test = {}

--- Register a case; names must be unique. Cases run in registration order.
---@param name string
---@param opts plasma.test.CaseOptions
---@param fn fun(t: plasma.test.T)
---@overload fun(name: string, fn: fun(t: plasma.test.T))
function test.case(name, opts, fn) end

--- Run the registered cases: TAP on stdout ending in "N passed, N failed". Returns true if no
--- case failed (a plan returning false exits with status 1).
---@param opts? plasma.test.RunOptions
---@return boolean
function test.run(opts) end

--- Forget every registered case.
function test.reset() end

--- Render a value as the assertion messages do (strings quoted, tables compact).
---@param value any
---@return string
function test.repr(value) end
